"""A Stan program with data, as a :class:`~pymc_ext.density.LogDensity`.

:class:`StanModel` compiles the program once (stanc, then our C++ shim around
``stan::model::model_base``, into a cached shared library, see
:mod:`stan_bridge.builder`) and calls it through ctypes
(:mod:`stan_bridge.library`): log density and gradient (with or without the
Jacobian, with or without constants), batched versions, and a
prior-predictive simulator for programs that follow the convention in
:mod:`stan_bridge.prior`. Constrain / unconstrain, parameter names and
generated quantities come from :class:`stan_bridge.constrain.ConstrainMixin`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NoReturn

import numpy as np

from pymc_ext.density import BaseLogDensity
from stan_bridge.builder import ModelBuild, build_model, user_message
from stan_bridge.constrain import ConstrainMixin
from stan_bridge.data import StanDataError, check_data, load_data, pack_data
from stan_bridge.layout import VariableLayout
from stan_bridge.library import ModelHandle, ShimLibrary, ShimStatus, StanRejectError
from stan_bridge.toolchain import Toolchain, find_toolchain

__all__ = ["StanModel", "StanModelError"]


class StanModelError(ValueError):
    """The program cannot be used as a log density (for example: no parameters)."""


def _check_has_parameters(info: dict) -> None:
    if not info.get("parameters"):
        raise StanModelError(
            "The Stan program has no parameters block (or it is empty), so there is no "
            "density to work with. Add parameters, or run it with CmdStan's "
            "fixed_param sampler (cmdstanpy: model.sample(fixed_param=True))."
        )


def _looks_like_code(text: str) -> bool:
    return "\n" in text or "{" in text


def _read_program(stan_file_or_code: str | os.PathLike) -> tuple[Path | None, str]:
    """``(file or None, code)`` from a ``.stan`` path or from the code itself."""
    if not isinstance(stan_file_or_code, os.PathLike) and _looks_like_code(str(stan_file_or_code)):
        return None, str(stan_file_or_code)
    stan_file = Path(stan_file_or_code)
    if not stan_file.is_file():
        raise FileNotFoundError(
            f"Stan file {stan_file} does not exist. Pass the path of a .stan file "
            "or the program's code as a string."
        )
    return stan_file, stan_file.read_text()


class StanModel(ConstrainMixin, BaseLogDensity):
    """A Stan program and its data, as a log density on the unconstrained space.

    Parameters
    ----------
    stan_file_or_code : str or path
        A ``.stan`` file, or the program's code as a string.
    data : dict or path, optional
        The data, as cmdstanpy takes them: a dict ``name -> value`` or the
        path of a JSON file.
    seed : int
        Seed of the RNG used by ``transformed data`` (as CmdStan's seed).
    propto : bool
        Drop constant terms of ``~`` statements (as Stan's samplers do).
        Default True. With False the density is fully normalised where
        Stan's distributions allow it.
    jacobian : bool
        Include the log Jacobian of the constraining transforms. Default
        True (the density of the unconstrained parameters, which is what
        MCMC and Pathfinder need).
    toolchain : str, path or Toolchain, optional
        See :func:`stan_bridge.toolchain.find_toolchain`.
    cache_dir : path, optional
        Where builds are cached (default ``$STAN_BRIDGE_CACHE`` or
        ``~/.cache/stan_bridge``).
    model_name : str, optional
        Name of the model (default: the file's stem, or ``"model"``).
    stanc_options : sequence of str, optional
        Extra stanc flags, for example ``["--O"]``.
    cxxflags : sequence of str, optional
        Extra C++ compiler flags, for example ``["-march=native"]``.
    include_paths : sequence of path, optional
        Where ``#include`` files are searched (default: the file's folder).
    progressbar : bool
        Show the build steps when the program has to be compiled.

    Attributes
    ----------
    dim : int
        Number of unconstrained parameters.
    names : list of str
        Parameters, then transformed parameters, in declaration order (what
        :meth:`constrain` returns).
    shapes : dict
        ``name -> shape`` (parameters, transformed parameters and generated
        quantities).
    data : dict
        The data as numpy arrays.
    info : dict
        What ``stanc --info`` says about the program.
    build : ModelBuild
        Where the compiled library is.
    layout : VariableLayout
        Where each variable sits in Stan's flat output
        (:mod:`stan_bridge.layout`).

    Examples
    --------
    >>> import numpy as np
    >>> from stan_bridge import StanModel
    >>> from stan_bridge.programs import EXAMPLE_CODE
    >>> # EXAMPLE_CODE: y ~ normal(mu, sigma), with the prior-predictive convention
    >>> sm = StanModel(EXAMPLE_CODE, {"N": 3, "y": [0.1, -0.3, 0.2], "prior_only": 0},
    ...                progressbar=False)
    >>> sm.dim, sm.names
    (2, ['mu', 'sigma', 'log_sigma'])
    >>> lp, grad = sm.logp_and_grad(np.zeros(2))
    >>> grad.shape
    (2,)
    >>> sm.constrain(np.array([0.5, 0.0]))
    {'mu': array(0.5), 'sigma': array(1.), 'log_sigma': array(0.)}
    """

    def __init__(
        self,
        stan_file_or_code: str | os.PathLike,
        data: Mapping[str, Any] | str | os.PathLike | None = None,
        *,
        seed: int = 0,
        propto: bool = True,
        jacobian: bool = True,
        toolchain: str | os.PathLike | Toolchain | None = None,
        cache_dir: str | os.PathLike | None = None,
        model_name: str | None = None,
        stanc_options: Sequence[str] = (),
        cxxflags: Sequence[str] = (),
        include_paths: Sequence[str | os.PathLike] | None = None,
        progressbar: bool = True,
    ) -> None:
        stan_file, code = _read_program(stan_file_or_code)
        if model_name is None:
            model_name = stan_file.stem if stan_file is not None else "model"
        if include_paths is None:
            include_paths = [stan_file.parent] if stan_file is not None else []
        self.stan_file = stan_file
        self.code = code
        self.toolchain = find_toolchain(toolchain)
        display = stan_file.name if stan_file is not None else f"{model_name}.stan"

        raw_data = load_data(data)  # before any compiling: bad input fails fast

        def validate(info: dict) -> None:
            _check_has_parameters(info)
            check_data(raw_data, info.get("inputs", {}))

        self.model_name = model_name
        self.display_name = display
        self.build: ModelBuild = build_model(
            code,
            self.toolchain,
            display_name=display,
            include_paths=include_paths,
            stanc_options=tuple(stanc_options),
            cxxflags=tuple(cxxflags),
            cache=cache_dir,
            progressbar=progressbar,
            validate=validate,
        )
        self._build_options = dict(
            seed=seed, propto=propto, jacobian=jacobian, toolchain=self.toolchain
        )
        self._init_from_build(raw_data, seed=seed, propto=propto, jacobian=jacobian)

    # -- construction --------------------------------------------------------
    def _init_from_build(self, raw_data: dict, *, seed: int, propto: bool, jacobian: bool):
        self.info = self.build.info
        _check_has_parameters(self.info)
        inputs = self.info.get("inputs", {})
        arrays = check_data(raw_data, inputs)
        self.data = arrays
        self.seed = int(seed)
        self.propto = bool(propto)
        self.jacobian = bool(jacobian)
        self._lib = ShimLibrary.load(self.build.library)
        real_part, int_part = pack_data(arrays, inputs)
        try:
            self._handle = ModelHandle(self._lib, real_part, int_part, seed=self.seed)
        except StanRejectError as err:
            msg = user_message(str(err), self.display_name)
            raise StanDataError(
                f"Stan rejected the data: {msg}\nCheck the sizes and constraints that the "
                "program's data block declares against the data given."
            ) from None
        info = self._handle.info
        if info["dim"] == 0:
            raise StanModelError(
                "The Stan program has no unconstrained parameters with these data (every "
                "parameter has size zero): there is no density to work with."
            )
        self.layout = VariableLayout.from_info(self.info, info)
        self.param_names_list = list(self.layout.params)
        self.tparam_names_list = list(self.layout.tparams)
        self.gq_names_list = list(self.layout.gqs)
        super().__init__(
            int(info["dim"]),
            names=self.param_names_list + self.tparam_names_list,
            shapes=dict(self.layout.shapes),
            dims={},
            coords={},
        )
        self._point_shape = (self.dim,)

    def with_data(self, data: Mapping[str, Any] | str | os.PathLike | None, **kwargs) -> StanModel:
        """The same program with other data (no compiling: the library is shared).

        Parameters
        ----------
        data : dict or path
            The new data.
        **kwargs
            ``seed``, ``propto``, ``jacobian`` to change.

        Returns
        -------
        StanModel

        Examples
        --------
        >>> import numpy as np
        >>> from stan_bridge.programs import example_model
        >>> sm = example_model()
        >>> sm2 = sm.with_data({"N": 2, "y": [1.0, 2.0], "prior_only": 0})
        >>> sm2.data["y"]
        array([1., 2.])
        """
        new = object.__new__(type(self))
        new.stan_file = self.stan_file
        new.code = self.code
        new.toolchain = self.toolchain
        new.build = self.build
        new.model_name = self.model_name
        new.display_name = self.display_name
        opts = {k: v for k, v in self._build_options.items() if k != "toolchain"}
        opts.update(kwargs)
        new._build_options = {**opts, "toolchain": self.toolchain}
        new._init_from_build(load_data(data), **opts)
        return new

    # -- LogDensity ----------------------------------------------------------
    def _raise(self, msg: str) -> NoReturn:
        raise RuntimeError(
            f"Error in Stan model {self.model_name}: {user_message(msg, self.display_name)}"
        )

    def _logp(self, x: np.ndarray) -> float:
        return self.log_density(x, counted=False)

    def logp_and_grad(self, x: np.ndarray) -> tuple[float, np.ndarray]:
        """Log density and its gradient at one unconstrained point (counted in ``grad_evals``).

        The hot path of every sampler, kept short: see :meth:`log_density_gradient`.
        """
        self.grad_evals += 1
        if np.shape(x) != self._point_shape:
            raise ValueError(f"Expected a point of shape ({self.dim},); got {np.shape(x)}.")
        status, lp, grad, msg = self._handle.log_density_gradient(x, self.propto, self.jacobian)
        if status:
            return self._on_error(status, msg)
        return lp, grad

    def _on_error(self, status: int, msg: str) -> tuple[float, np.ndarray]:
        if status == ShimStatus.REJECT:
            self.last_reject = user_message(msg, self.display_name)
            return -np.inf, np.full(self.dim, np.nan)
        self._raise(msg)

    def _logp_and_grad(self, x: np.ndarray) -> tuple[float, np.ndarray]:
        return self.log_density_gradient(x, counted=False)

    def _logp_batch(self, X: np.ndarray) -> np.ndarray:
        X = self._as_batch(X)
        status, lp, _, msg = self._handle.log_density_batch(X, self.propto, self.jacobian)
        if status:
            self._raise(msg)
        return lp

    def _logp_and_grad_batch(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        X = self._as_batch(X)
        status, lp, grad, _, msg = self._handle.log_density_gradient_batch(
            X, self.propto, self.jacobian
        )
        if status:
            self._raise(msg)
        return lp, grad

    def log_density(
        self,
        x: np.ndarray,
        *,
        propto: bool | None = None,
        jacobian: bool | None = None,
        counted: bool = True,
    ) -> float:
        """Log density at one unconstrained point.

        Parameters
        ----------
        x : ndarray
            Shape ``(dim,)``.
        propto, jacobian : bool, optional
            Override the model's defaults for this call.
        counted : bool
            Count the call in ``logp_evals``.

        Returns
        -------
        float
            ``-inf`` where the model rejects the point (a ``reject``
            statement or an argument outside a distribution's support).

        Examples
        --------
        >>> import numpy as np
        >>> from stan_bridge.programs import example_model
        >>> sm = example_model()
        >>> with_jacobian = sm.log_density(np.array([0.0, 1.0]))
        >>> without = sm.log_density(np.array([0.0, 1.0]), jacobian=False)
        >>> round(with_jacobian - without, 12)  # log |d sigma / d log(sigma)| at log(sigma) = 1
        1.0
        """
        x = self._as_point(x)
        if counted:
            self.logp_evals += 1
        status, lp, msg = self._handle.log_density(
            x,
            self.propto if propto is None else propto,
            self.jacobian if jacobian is None else jacobian,
        )
        if status == ShimStatus.REJECT:
            self.last_reject = user_message(msg, self.display_name)
            return -np.inf
        if status:
            self._raise(msg)
        return lp

    def log_density_gradient(
        self,
        x: np.ndarray,
        *,
        propto: bool | None = None,
        jacobian: bool | None = None,
        counted: bool = True,
    ) -> tuple[float, np.ndarray]:
        """Log density and its gradient at one unconstrained point.

        Parameters
        ----------
        x : ndarray
            Shape ``(dim,)``.
        propto, jacobian : bool, optional
            Override the model's defaults for this call.
        counted : bool
            Count the call in ``grad_evals``.

        Returns
        -------
        (float, ndarray)
            Where the model rejects the point: ``-inf`` and a NaN gradient.

        Examples
        --------
        >>> import numpy as np
        >>> from stan_bridge.programs import example_model
        >>> sm = example_model()
        >>> lp, g = sm.log_density_gradient(np.zeros(2))
        >>> g.shape
        (2,)
        """
        x = self._as_point(x)
        if counted:
            self.grad_evals += 1
        status, lp, grad, msg = self._handle.log_density_gradient(
            x,
            self.propto if propto is None else propto,
            self.jacobian if jacobian is None else jacobian,
        )
        if status:
            return self._on_error(status, msg)
        return lp, grad

    # -- helpers -------------------------------------------------------------
    def initial_point(self, random_seed: int | None = None, radius: float = 2.0) -> np.ndarray:
        """An initial point on the unconstrained space.

        With a ``random_seed``, a random point as Stan draws one: uniform on
        ``(-radius, radius)``. Without one (as the algorithms call it, to centre
        their overdispersed starts), zero, Stan's ``init=0``, where the log
        density is finite there; otherwise seeded draws as above, so the point
        never depends on unseeded randomness. Tries up to 100 draws for one
        with a finite log density and gradient.

        Examples
        --------
        >>> from stan_bridge.programs import example_model
        >>> example_model().initial_point(1).shape
        (2,)
        >>> example_model().initial_point().tolist()
        [0.0, 0.0]
        """
        if random_seed is None:
            zero = np.zeros(self.dim)
            lp, grad = self.log_density_gradient(zero, counted=False)
            if np.isfinite(lp) and np.all(np.isfinite(grad)):
                return zero
            random_seed = 0
        rng = np.random.default_rng(random_seed)
        for _ in range(100):
            x = rng.uniform(-radius, radius, size=self.dim)
            lp, grad = self.log_density_gradient(x, counted=False)
            if np.isfinite(lp) and np.all(np.isfinite(grad)):
                return x
        raise StanModelError(
            f"No finite log density at 100 random initial points in (-{radius}, {radius}). "
            "Check the model, or give initial values."
        )

    def prior_predictive(
        self,
        n: int,
        random_seed: int | None = None,
        observed: Sequence[str] | None = None,
        **kwargs: Any,
    ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Draw ``n`` (parameters, simulated data) pairs from the prior predictive.

        The program must follow the convention in :mod:`stan_bridge.prior`:
        an ``int prior_only`` data flag that switches the likelihood off and
        a generated quantity ``<obs>_rep`` drawn with ``_rng`` functions for
        each simulated observation ``<obs>``.

        Parameters
        ----------
        n : int
            Number of draws.
        random_seed : int, optional
            Seed; the same seed gives the same draws.
        observed : sequence of str, optional
            Which data variables are simulated (default: every data variable
            ``y`` with a generated quantity ``y_rep``).
        **kwargs
            Passed to :func:`stan_bridge.prior.prior_predictive` (``flag``,
            ``suffix``, ``chains``, ``thin``, ``warmup``, ``progressbar``).

        Returns
        -------
        params : ndarray
            ``(n, dim)`` unconstrained prior draws.
        simulated : dict
            ``obs_name -> (n, *shape)``.

        Raises
        ------
        stan_bridge.prior.PriorPredictiveError
            When the program does not follow the convention.

        Examples
        --------
        >>> from stan_bridge.programs import example_model
        >>> sm = example_model()
        >>> params, sims = sm.prior_predictive(100, random_seed=1, progressbar=False)
        >>> params.shape, sims["y"].shape
        ((100, 2), (100, 4))
        """
        from stan_bridge.prior import prior_predictive

        seed = kwargs.pop("seed", None)
        if random_seed is None:
            random_seed = seed
        return prior_predictive(self, n, random_seed=random_seed, observed=observed, **kwargs)

    def __repr__(self) -> str:
        src = self.stan_file.name if self.stan_file is not None else "<code>"
        return f"StanModel({src}, dim={self.dim}, names={self.names})"
