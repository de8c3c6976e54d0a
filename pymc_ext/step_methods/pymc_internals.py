"""The one place where the step methods touch PyMC's private attributes.

PyMC gives a step method no public way to swap the mass matrix of a built
NUTS, to restart its step-size adaptation from the averaged step size, or to
reuse the logp-and-gradient function it compiled. :class:`WarmStartNUTS
<pymc_ext.step_methods.warmstart.WarmStartNUTS>` needs all three, so they are
collected here, behind :func:`nuts_internals`, which checks the PyMC version
first: these attributes are not part of PyMC's API and may change in any
release. Supported: :data:`SUPPORTED_PYMC`.

Nothing else in :mod:`pymc_ext` reads or writes a private attribute of a PyMC
object.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = [
    "SUPPORTED_PYMC",
    "UnsupportedPyMCVersionError",
    "check_pymc_version",
    "NUTSInternals",
    "nuts_internals",
]

#: PyMC versions whose NUTS internals this module knows: ``>=6.3,<6.5``
#: (``(major, minor)`` pairs; the patch release does not matter).
SUPPORTED_PYMC: tuple[tuple[int, int], ...] = ((6, 3), (6, 4))


class UnsupportedPyMCVersionError(RuntimeError):
    """The installed PyMC is one whose NUTS internals the step methods were not written for."""


def _supported_text() -> str:
    return ", ".join(f"{major}.{minor}.x" for major, minor in SUPPORTED_PYMC)


def check_pymc_version(version: str | None = None) -> None:
    """Raise unless ``version`` (default: the installed PyMC) is a supported one.

    Parameters
    ----------
    version : str, optional
        A PyMC version string; the installed ``pymc.__version__`` by default.

    Raises
    ------
    UnsupportedPyMCVersionError
        Naming the installed and the supported versions.

    Examples
    --------
    >>> from pymc_ext.step_methods.pymc_internals import check_pymc_version
    >>> check_pymc_version("6.3.2")
    >>> check_pymc_version("5.10.0")
    Traceback (most recent call last):
    ...
    pymc_ext.step_methods.pymc_internals.UnsupportedPyMCVersionError: ...
    """
    if version is None:
        import pymc

        version = pymc.__version__
    parts = version.split(".")
    try:
        major_minor = (int(parts[0]), int(parts[1]))
    except (IndexError, ValueError):
        major_minor = None
    if major_minor not in SUPPORTED_PYMC:
        raise UnsupportedPyMCVersionError(
            f"pymc_ext's WarmStartNUTS uses internals of PyMC's NUTS that change between "
            f"releases; it supports PyMC {_supported_text()}, and PyMC {version} is installed. "
            "Install a supported PyMC (pip install 'pymc>=6.3,<6.4'), or use pm.NUTS."
        )


@dataclass(frozen=True)
class NUTSInternals:
    """Access to the private parts of a built PyMC ``NUTS`` step (see the module docstring).

    Build it with :func:`nuts_internals`, which checks the PyMC version.

    Parameters
    ----------
    step : pymc.NUTS
        The step (a :class:`WarmStartNUTS <pymc_ext.step_methods.warmstart.WarmStartNUTS>`).

    Examples
    --------
    >>> import numpy as np, pymc as pm
    >>> from pymc_ext.step_methods.pymc_internals import nuts_internals
    >>> with pm.Model():
    ...     x = pm.Normal("x", 0, 1, shape=2)
    ...     step = pm.NUTS()
    >>> internals = nuts_internals(step)
    >>> fn, dtype = internals.compiled_logp_dlogp()
    >>> [float(g) for g in fn(np.ones(2, dtype=dtype))[1]]
    [-1.0, -1.0]
    >>> internals.averaged_step_size() > 0
    True
    """

    step: Any

    @property
    def model(self) -> Any:
        """The model the step was built on."""
        return self.step._model

    def compiled_logp_dlogp(self) -> tuple[Any, Any]:
        """``(fn, dtype)``: the compiled ``x -> (logp, grad)`` on the step's flat vector."""
        fn = self.step._logp_dlogp_func
        return fn._pytensor_function, fn.dtype

    def logp_dlogp(self, q: Any) -> tuple[Any, np.ndarray]:
        """``(logp, grad)`` at the raveled point ``q`` (a ``RaveledVars``), via the integrator."""
        return self.step.integrator._logp_dlogp_func(q.data, q.point_map_info)

    def replace_potential(self, potential: Any) -> None:
        """Make ``potential`` the step's mass matrix (the step's and its integrator's)."""
        self.step.potential = potential
        self.step.integrator._potential = potential

    def averaged_step_size(self) -> float:
        """The dual-averaging estimate of the step size (``exp(log_bar)``; public API)."""
        return float(self.step.step_adapt.current(False))

    def restart_step_size_adaptation(self) -> None:
        """Restart dual averaging from the current averaged step size."""
        adapt = self.step.step_adapt
        adapt._initial_step = float(np.exp(adapt._log_bar))
        adapt.reset()

    def initial_step_size(self) -> float:
        """The step size dual averaging starts from."""
        return float(self.step.step_adapt._initial_step)

    def reset_step_size_adaptation(self, initial_step: float) -> None:
        """Start dual averaging again from ``initial_step`` (a new chain)."""
        adapt = self.step.step_adapt
        adapt._initial_step = float(initial_step)
        adapt.reset()


def nuts_internals(step: Any) -> NUTSInternals:
    """Check the PyMC version, then give access to ``step``'s internals.

    Parameters
    ----------
    step : pymc.NUTS
        A built NUTS step.

    Returns
    -------
    NUTSInternals

    Raises
    ------
    UnsupportedPyMCVersionError
        When the installed PyMC is not one of :data:`SUPPORTED_PYMC`.

    Examples
    --------
    >>> import pymc as pm
    >>> from pymc_ext.step_methods.pymc_internals import nuts_internals
    >>> with pm.Model():
    ...     x = pm.Normal("x")
    ...     internals = nuts_internals(pm.NUTS())
    >>> internals.model is not None
    True
    """
    check_pymc_version()
    return NUTSInternals(step)
