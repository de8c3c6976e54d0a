"""What :class:`stan_bridge.CmdStanModel`'s flow and amortized methods do, in cmdstanpy's keywords.

The methods on the class are thin; the work is here:

- :func:`flow_warmstart`: fit a flow to the posterior
  (:func:`pymc_ext.flows.flow_init` on the program's
  :class:`~stan_bridge.StanModel`) and write CmdStan inits (one flow draw per
  chain) and a metric file (the flow draws' importance-weighted covariance),
  for ``CmdStanModel.sample(warmstart="flow")``;
- :func:`flow_sample`: flow MCMC (:func:`pymc_ext.flow_mcmc`) on the program,
  returned as a :class:`~stan_bridge.flow_fit.StanFlowFit` with cmdstanpy's
  accessors, and written as Stan CSV files to ``output_dir``;
- :func:`amortize`: a :class:`~stan_bridge.stan_amortizer.StanAmortizer`
  trained on the program's prior predictive.

Options are checked before anything is compiled: an unknown keyword, a seed
that is not an integer, or (for :func:`amortize`) a program without the
prior-predictive convention fails at once.
"""

from __future__ import annotations

import inspect
import logging
import os
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

__all__ = [
    "FLOW_INIT_OPTIONS",
    "FLOW_WARMSTART_DEFAULTS",
    "WarningsAtCaller",
    "amortize",
    "check_flow_warmstart_options",
    "check_seed",
    "cmdstan_iter_warmup",
    "flow_options",
    "flow_sample",
    "flow_warmstart",
    "flow_warmstart_record",
]

_log = logging.getLogger("stan_bridge")

#: flow_init's settings for ``warmstart="flow"`` unless ``warmstart_options`` sets them: the
#: flow is fitted to the Pathfinder draws by forward KL only. flow_init's default, ``"both"``,
#: adds a reverse-KL refinement from the density, which cost more gradient evaluations than
#: plain CmdStan's whole run on eight schools (benchmarks/stan_wrapper.py; docs/stan.md).
#: Seeded by Pathfinder, not by tempering as the PyMC flow warm starts are: a Stan program's
#: density is evaluated one point at a time, and the explorations' 2 x 1024 walkers cost
#: 3.7 million gradients on arK (171 s against 4.8 s; docs/stan.md). ``explore="tempering"``
#: asks for them; ``flow_sample`` (flow MCMC) explores by tempering by default.
FLOW_WARMSTART_DEFAULTS: dict[str, Any] = {"method": "forward", "explore": "pathfinder"}

#: flow_init's options that ``warmstart_options`` may set for ``warmstart="flow"``.
FLOW_INIT_OPTIONS = (
    "num_draws", "num_paths", "method", "random_seed", "progressbar", "flow_kwargs",
    "forward_kwargs", "reverse_kwargs", "num_proposals", "num_threads", "explore",
    "tempering_options",
)


class WarningsAtCaller:
    """Re-issue the warnings raised in a ``with`` block at the user's line, not inside stan_bridge.

    The samplers behind the wrapper point their warnings at their own
    caller, which is a stan_bridge function; this re-issues each one
    ``depth`` frames above the function holding the ``with`` block (1: that
    function's caller), under the user's warning filters. ``rewrite``
    (``text -> text``), when given, rewrites each message first (the Stan
    amortizer turns PyMC advice into Stan advice with it).

    Examples
    --------
    >>> import warnings
    >>> from stan_bridge.wrapper_methods import WarningsAtCaller
    >>> def inner():
    ...     with WarningsAtCaller(depth=1):
    ...         warnings.warn("look here", UserWarning)
    >>> with warnings.catch_warnings(record=True) as caught:
    ...     warnings.simplefilter("always")
    ...     inner()
    >>> caught[0].filename.startswith("<doctest")  # the caller's line, not inner()'s
    True
    """

    def __init__(self, depth: int = 1, rewrite: Callable[[str], str] | None = None) -> None:
        self.depth = int(depth)
        self.rewrite = rewrite
        self._catcher = warnings.catch_warnings(record=True)

    def __enter__(self) -> WarningsAtCaller:
        self._caught = self._catcher.__enter__()
        warnings.simplefilter("always")
        return self

    def __exit__(self, *exc: Any) -> None:
        self._catcher.__exit__(*exc)
        if exc[0] is None:
            for w in self._caught:
                message = w.message
                if self.rewrite is not None:
                    text = self.rewrite(str(message))
                    if text != str(message):
                        try:
                            message = w.category(text)
                        except TypeError:  # a category that takes other arguments: as it was
                            pass
                warnings.warn(message, w.category, stacklevel=2 + self.depth)


def check_flow_warmstart_options(options: Mapping[str, Any] | None) -> dict[str, Any]:
    """``warmstart_options`` of ``sample(warmstart="flow")``, checked (before any compiling).

    Raises
    ------
    TypeError
        On an option that is not one of :data:`FLOW_INIT_OPTIONS` or ``output_dir``.

    Examples
    --------
    >>> from stan_bridge.wrapper_methods import check_flow_warmstart_options
    >>> check_flow_warmstart_options({"num_draws": 500})
    {'num_draws': 500}
    """
    opts = dict(options or {})
    unknown = sorted(set(opts) - set(FLOW_INIT_OPTIONS) - {"output_dir"})
    if unknown:
        raise TypeError(
            f"Unknown warmstart_options {unknown} for warmstart='flow'; it takes "
            f"{sorted(FLOW_INIT_OPTIONS + ('output_dir',))} (see pymc_ext.flows.flow_init)."
        )
    return opts


def check_seed(seed: Any) -> int:
    """The run's seed as an int: the one given, or a random one (as cmdstanpy draws).

    Raises
    ------
    ValueError
        For anything but ``None`` or a non-negative integer.

    Examples
    --------
    >>> from stan_bridge.wrapper_methods import check_seed
    >>> check_seed(7)
    7
    """
    if seed is None:
        return int(np.random.default_rng().integers(1, 2**31 - 1))
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer or None; got {seed!r}.")
    return int(seed)


def flow_options(
    chains: int | None, iter_sampling: int | None, show_progress: bool, options: Mapping[str, Any]
) -> Any:
    """The :class:`~pymc_ext.flow_sampler.config.FlowMCMCConfig` of a ``flow_sample`` call.

    ``chains`` are flow MCMC's walkers (each one chain of the result),
    ``iter_sampling`` its production draws per walker; ``options`` any other
    field of ``FlowMCMCConfig``. Raises on an unknown option or a bad value.

    Examples
    --------
    >>> from stan_bridge.wrapper_methods import flow_options
    >>> flow_options(16, 200, False, {"n_rounds": 3}).chains
    16
    >>> flow_options(16, 200, False, {"draws": 5})
    Traceback (most recent call last):
    ...
    TypeError: flow_sample takes the number of draws as iter_sampling= (cmdstanpy's name), ...
    """
    from pymc_ext.flow_sampler.config import make_config

    renamed = {"draws": "iter_sampling", "progressbar": "show_progress", "random_seed": "seed"}
    for ours, theirs in renamed.items():
        if ours in options:
            what = {"draws": "the number of draws"}.get(ours, ours)
            raise TypeError(
                f"flow_sample takes {what} as {theirs}= (cmdstanpy's name), not {ours}=."
            )
    if "iter_warmup" in options:
        raise TypeError(
            "flow_sample has no iter_warmup: flow MCMC adapts in rounds; set n_rounds= "
            "(and train_steps=) instead."
        )
    overrides = dict(options)
    overrides.update(chains=chains, draws=iter_sampling, progressbar=bool(show_progress))
    return make_config(None, overrides)


def flow_sample(
    model: Any,
    data: Any = None,
    chains: int | None = None,
    iter_sampling: int | None = None,
    seed: int | None = None,
    show_progress: bool = True,
    output_dir: str | os.PathLike | None = None,
    num_threads: int | None = 1,
    **options: Any,
) -> Any:
    """The body of :meth:`stan_bridge.CmdStanModel.flow_sample` (see there).

    Examples
    --------
    >>> from stan_bridge import CmdStanModel
    >>> from stan_bridge.programs import reference_data, write_program
    >>> from stan_bridge.wrapper_methods import flow_sample
    >>> model = CmdStanModel(stan_file=write_program("eight_schools"))
    >>> fit = flow_sample(model, reference_data("eight_schools"), chains=8, iter_sampling=20,
    ...                   seed=2, show_progress=False, n_rounds=1, search_climbs=0, num_paths=4,
    ...                   fit="forward", first_train_steps=100)
    >>> fit.chains, fit.num_draws_sampling
    (8, 20)
    """
    from pymc_ext.flow_sampler.driver import flow_mcmc
    from pymc_ext.flows.conditional import torch_threads
    from stan_bridge.flow_fit import flow_fit_from_datatree

    config = flow_options(chains, iter_sampling, show_progress, options)
    seed = check_seed(seed)
    sm = model.stan_model(data, seed=seed)
    flow_stream, gq_stream = np.random.SeedSequence(seed).spawn(2)
    with WarningsAtCaller(depth=2), torch_threads(num_threads):
        dt = flow_mcmc(sm, config=config, random_seed=np.random.default_rng(flow_stream))
    attrs = dt["sample_stats"].attrs
    seconds = {
        "Warm-up": float(attrs.get("adaptation_seconds", 0.0)),
        "Sampling": float(attrs.get("sampling_seconds", 0.0)),
    }
    fit = flow_fit_from_datatree(
        sm, dt, gq_seed=int(gq_stream.generate_state(1)[0] % (2**31 - 1)), seconds=seconds
    )
    fit.seed = seed
    if output_dir is not None:
        fit.save_csvfiles(output_dir)
    return fit


def flow_warmstart(
    stan_model: Any,
    chains: int,
    directory: str | os.PathLike,
    *,
    metric: str = "auto",
    random_seed: int | None = None,
    progressbar: bool = True,
    num_threads: int | None = 1,
    **flow_init_kwargs: Any,
) -> tuple[list[str], str | None, Any]:
    """Fit a flow to the posterior; write CmdStan inits (one per chain) and a metric file.

    The metric and the warmup that follows are chosen as for Pathfinder's
    warm start (:func:`stan_bridge.warmstart.plan_warmstart`), from the flow
    draws' importance-weighted covariance and the flow's Pareto k against the
    posterior.

    Parameters
    ----------
    stan_model : StanModel
        The program with its data.
    chains : int
        One inits file per chain, each from its own flow draw.
    directory : path
        Where the files go.
    metric : {"auto", "diag_e", "dense_e"}
        As for ``sample``.
    random_seed : int, optional
        Seeds the flow fit and the choice of inits.
    progressbar : bool
        Progress bars (Pathfinder seeding, flow fit).
    num_threads : int or None
        Torch threads while the flow is fitted (1; None: torch's setting).
    **flow_init_kwargs
        Keywords of :func:`pymc_ext.flows.flow_init` (``num_draws``,
        ``num_paths``, ``method``, ``flow_kwargs``, ...), over
        :data:`FLOW_WARMSTART_DEFAULTS` (``method="forward"``,
        ``explore="pathfinder"``), and ``explore`` / ``tempering_options`` of
        :func:`~pymc_ext.flow_sampler.explored_init.explored_flow_init`:
        ``explore="tempering"`` fits the flow to tempering explorations'
        walkers, so the chains start in every mode they found, and warns when
        there are several (CmdStan's NUTS cannot weigh them); it costs many
        more gradients here than for a PyMC model (see
        :data:`FLOW_WARMSTART_DEFAULTS`).

    Returns
    -------
    inits_files : list of str
    metric_file : str or None
    info : WarmStartInfo
        ``method="flow"``; ``result`` is the
        :class:`~pymc_ext.flows.FlowInitResult`; ``seconds`` and
        ``iter_warmup`` are filled in by the caller.

    Examples
    --------
    >>> import tempfile
    >>> from stan_bridge.programs import example_model
    >>> from stan_bridge.wrapper_methods import flow_warmstart
    >>> inits, metric_file, info = flow_warmstart(
    ...     example_model(), 2, tempfile.mkdtemp(), random_seed=1, progressbar=False,
    ...     num_draws=200, num_paths=2, flow_kwargs={"transforms": 2, "hidden_features": (16, 16)},
    ...     forward_kwargs={"max_steps": 100}, reverse_kwargs={"max_steps": 100})
    >>> len(inits), info.method, info.grad_evals > 0
    (2, 'flow', True)
    """
    from pymc_ext.flow_sampler.explored_init import explored_flow_init
    from pymc_ext.flows.conditional import torch_threads
    from stan_bridge.warmstart import WarmStartInfo, write_warmstart_files

    check_flow_warmstart_options(flow_init_kwargs)
    grad0, logp0 = int(stan_model.grad_evals), int(stan_model.logp_evals)
    with warnings.catch_warnings(), torch_threads(num_threads):
        # flow_init warns at k > 0.7 that its draws are starting points only: here they are
        # only that, and the plan (below) decides the warmup from k
        warnings.filterwarnings("ignore", message="The flow's Pareto k", category=UserWarning)
        result = explored_flow_init(
            stan_model, random_seed=random_seed, progressbar=progressbar,
            **{**FLOW_WARMSTART_DEFAULTS, **flow_init_kwargs},
        )
    inits_files, metric_file, plan = write_warmstart_files(
        stan_model, result, chains, directory, metric=metric, random_seed=random_seed
    )
    _log.info("Flow warm start: %s.", plan.reason)
    path_ok = np.asarray(result.seed.path_ok, dtype=bool)
    info = WarmStartInfo(
        method="flow",
        grad_evals=int(stan_model.grad_evals) - grad0,
        logp_evals=int(stan_model.logp_evals) - logp0,
        pareto_k=float(result.pareto_k),
        num_paths=int(path_ok.size),
        num_paths_ok=int(path_ok.sum()),
        metric=plan.metric,
        iter_warmup=int(plan.warmup_arguments.get("iter_warmup", 1000)),
        inits_files=inits_files,
        metric_file=metric_file,
        seconds=0.0,
        result=result,
        metric_reason=plan.reason,
        warmup=plan.warmup,
        fallback=plan.fallback,
        plan=plan,
    )
    return inits_files, metric_file, info


def cmdstan_iter_warmup(fit: Any) -> int:
    """The warmup iterations CmdStan ran in each chain of ``fit``.

    Not cmdstanpy's ``num_draws_warmup``: that is the number of warmup
    *draws* per chain, thinned (``ceil(iter_warmup / thin)``). This is
    ``num_warmup`` of the run's config (``fit.metadata.cmdstan_config``);
    without it (an object that is not a ``CmdStanMCMC``), ``num_draws_warmup``
    times ``thin``.

    Parameters
    ----------
    fit : cmdstanpy.CmdStanMCMC

    Returns
    -------
    int

    Examples
    --------
    >>> from types import SimpleNamespace
    >>> from stan_bridge.wrapper_methods import cmdstan_iter_warmup
    >>> fit = SimpleNamespace(metadata=SimpleNamespace(
    ...     cmdstan_config={"num_warmup": 19, "thin": 2}), num_draws_warmup=10)
    >>> cmdstan_iter_warmup(fit)
    19
    """
    metadata = getattr(fit, "metadata", None)
    config = getattr(metadata, "cmdstan_config", None) or {}
    if config.get("num_warmup") is not None:
        return int(config["num_warmup"])
    return int(fit.num_draws_warmup) * int(config.get("thin", getattr(fit, "thin", 1)) or 1)


def flow_warmstart_record(
    info: Any,
    plan: Any,
    fit: Any,
    call_kwargs: Mapping[str, Any],
    *,
    seconds: float,
    mismatch: float = float("nan"),
    discarded: int = 0,
) -> Any:
    """The :class:`~stan_bridge.WarmStartInfo` of a finished ``sample(warmstart="flow")``.

    ``info`` is what :func:`flow_warmstart` returned; ``plan`` the plan that was
    run in the end (the kept-metric check may have replaced it with CmdStan's
    full warmup); ``fit`` CmdStan's result; ``call_kwargs`` the caller's
    ``sample`` keywords (their ``iter_warmup`` and ``inv_metric`` win).

    Examples
    --------
    >>> import tempfile
    >>> from types import SimpleNamespace
    >>> from stan_bridge.programs import example_model
    >>> from stan_bridge.wrapper_methods import flow_warmstart, flow_warmstart_record
    >>> _, _, info = flow_warmstart(
    ...     example_model(), 2, tempfile.mkdtemp(), random_seed=1, progressbar=False,
    ...     num_draws=200, num_paths=2, flow_kwargs={"transforms": 2, "hidden_features": (16, 16)},
    ...     forward_kwargs={"max_steps": 100})
    >>> done = flow_warmstart_record(info, info.plan, SimpleNamespace(num_draws_warmup=150),
    ...                              {"iter_warmup": 150}, seconds=1.0)
    >>> done.iter_warmup, done.warmup
    (150, 'given')
    """
    import dataclasses

    given = call_kwargs.get("iter_warmup") is not None
    return dataclasses.replace(
        info,
        plan=plan,
        iter_warmup=cmdstan_iter_warmup(fit),
        warmup="given" if given else plan.warmup,
        fallback=bool(plan.fallback),
        metric_reason=plan.reason + ("; iter_warmup given by the caller" if given else ""),
        metric_file=None if call_kwargs.get("inv_metric") is not None else info.metric_file,
        seconds=float(seconds),
        metric_mismatch=float(mismatch),
        discarded_leapfrogs=int(discarded),
    )


def _split_options(options: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Amortizer constructor options and ``fit`` options; an unknown one is a TypeError."""
    from pymc_ext.amortized.core import Amortizer

    def names(fn: Any) -> set[str]:
        return {p for p in inspect.signature(fn).parameters if p not in ("self", "model")}

    ctor, fit = names(Amortizer.__init__), names(Amortizer.fit) - {"random_seed", "progressbar"}
    ctor -= {"observed"}
    unknown = sorted(set(options) - ctor - fit)
    if unknown:
        raise TypeError(
            f"amortize() got unexpected keyword arguments {unknown}. It takes data, "
            "num_simulations, seed, show_progress, observed, train, the Amortizer's options "
            f"{sorted(ctor)} and fit's options {sorted(fit - {'num_simulations'})}."
        )
    return ({k: v for k, v in options.items() if k in ctor},
            {k: v for k, v in options.items() if k in fit})


def _training_data(model: Any, data: Any, info: dict, flag: str) -> dict[str, Any]:
    """The data the amortizer is built at, with ``flag = 0`` added where it is missing."""
    from stan_bridge.data import load_data

    data = dict(load_data(data))
    if flag in info.get("inputs", {}):
        value = data.setdefault(flag, 0)
        if int(np.asarray(value)) != 0:
            raise ValueError(
                f"data[{flag!r}] must be 0 (or left out) for amortize: the data set the shapes "
                f"and the fixed inputs; the amortizer sets {flag} = 1 itself to simulate."
            )
    return data


def amortize(
    model: Any,
    data: Any = None,
    num_simulations: int | None = None,
    *,
    observed: Sequence[str] | None = None,
    seed: int | None = None,
    show_progress: bool = True,
    train: bool = True,
    **options: Any,
) -> Any:
    """The body of :meth:`stan_bridge.CmdStanModel.amortize` (see there).

    Examples
    --------
    >>> import tempfile, pathlib
    >>> from stan_bridge import CmdStanModel
    >>> from stan_bridge.programs import EXAMPLE_CODE, EXAMPLE_DATA
    >>> from stan_bridge.wrapper_methods import amortize
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "example.stan"
    >>> _ = path.write_text(EXAMPLE_CODE)
    >>> model = CmdStanModel(stan_file=path, compile=False)
    >>> amortizer = amortize(model, EXAMPLE_DATA, train=False, show_progress=False)
    >>> amortizer.target.observed, amortizer.fitted
    (['y'], False)
    """
    from stan_bridge.prior import check_convention
    from stan_bridge.stan_amortizer import StanAmortizer

    ctor_opts, fit_opts = _split_options(options)
    if model.stan_file is None:
        raise ValueError("amortize needs the Stan program: CmdStanModel(stan_file=...).")
    info = model.src_info()  # stanc --info: no compiling yet
    observed = check_convention(info, observed)
    seed = check_seed(seed)
    data = _training_data(model, data, info, "prior_only")
    sm = model.stan_model(data, seed=seed, progressbar=bool(show_progress))
    amortizer = StanAmortizer(sm, observed=observed, **ctor_opts)
    if train:
        start = time.perf_counter()
        amortizer.fit(num_simulations, random_seed=seed, progressbar=bool(show_progress),
                      **fit_opts)
        amortizer.training_seconds = time.perf_counter() - start
    return amortizer
