"""``CmdStanModel.flow_sample`` and ``CmdStanModel.amortize``: flow MCMC and amortized fitting.

:class:`FlowAndAmortizedMethods` is a mixin of :class:`stan_bridge.CmdStanModel`
(it needs the class's ``stan_model(data)``); the work is in
:mod:`stan_bridge.wrapper_methods`. Keywords follow cmdstanpy: ``data``,
``chains``, ``iter_sampling``, ``seed``, ``show_progress``, ``output_dir``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["FlowAndAmortizedMethods"]


class FlowAndAmortizedMethods:
    """Flow MCMC and amortized fitting for :class:`stan_bridge.CmdStanModel`.

    Examples
    --------
    >>> from stan_bridge import CmdStanModel
    >>> from stan_bridge.cmdstan_methods import FlowAndAmortizedMethods
    >>> issubclass(CmdStanModel, FlowAndAmortizedMethods)
    True
    """

    def flow_sample(
        self,
        data: Mapping[str, Any] | str | os.PathLike | None = None,
        chains: int | None = None,
        iter_sampling: int | None = None,
        seed: int | None = None,
        show_progress: bool = True,
        output_dir: str | os.PathLike | None = None,
        num_threads: int | None = 1,
        **options: Any,
    ) -> Any:
        """Flow MCMC on this program (local moves plus exact flow proposals), cmdstanpy-style.

        Runs :func:`pymc_ext.flow_mcmc` on the program's
        :class:`~stan_bridge.StanModel` (our compiled library; CmdStan's
        executable is not used). For posteriors that NUTS cannot mix across
        (separated modes); on easy unimodal ones it works but costs more than
        ``sample``, as the flow has to be fitted.

        Parameters
        ----------
        data : dict or path, optional
            As for ``sample``.
        chains : int, optional
            Walkers, at least 4, run vectorised; each is one chain of the
            result. Default: flow MCMC's, 64 to 256 from the dimension and
            the modes found.
        iter_sampling : int, optional
            Draws per chain after adaptation (default 500 up to 20
            parameters, 1000 above).
        seed : int, optional
            Makes the run reproducible (walkers, flow, proposals, generated
            quantities); random when not given, as in cmdstanpy.
        show_progress : bool
            Progress bars.
        output_dir : path, optional
            Write the draws there as Stan CSV files, one per chain, that
            ``cmdstanpy.from_csv(output_dir)`` reads (see
            :mod:`stan_bridge.stan_csv`); nothing is written otherwise.
        num_threads : int or None
            Torch CPU threads while flow MCMC runs (restored afterwards). 1 by
            default, as for the amortizer: the flows are small, and on a busy
            machine extra threads slow them down many times (measured here: 16 s
            with one thread, 130 s with two, on a 2-core machine running other
            jobs). ``None`` leaves torch's setting.
        **options
            Any other field of
            :class:`~pymc_ext.flow_sampler.config.FlowMCMCConfig`
            (``n_rounds``, ``fit``, ``local_kernel``, ``flow_kwargs``,
            ``thin``, ...). Unknown names raise ``TypeError`` before anything
            is compiled.

        Returns
        -------
        StanFlowFit
            ``draws()``, ``draws_pd()``, ``stan_variable()``,
            ``stan_variables()``, ``column_names``, ``summary()``,
            ``diagnose()``, ``to_datatree()``, ``figures`` (see
            :class:`~stan_bridge.flow_fit.StanFlowFit`). Parameters,
            transformed parameters and generated quantities, on the
            constrained scale.

        Examples
        --------
        >>> from stan_bridge import CmdStanModel
        >>> from stan_bridge.programs import reference_data, write_program
        >>> model = CmdStanModel(stan_file=write_program("eight_schools"))
        >>> fit = model.flow_sample(data=reference_data("eight_schools"), chains=8,
        ...                         iter_sampling=20, seed=1, show_progress=False,
        ...                         n_rounds=1, search_climbs=0, num_paths=4, fit="forward",
        ...                         first_train_steps=100)  # tiny settings, for a quick example
        >>> fit.draws().shape[:2], list(fit.summary().columns[-3:])
        ((20, 8), ['ESS_bulk', 'ESS_tail', 'R_hat'])
        """
        from stan_bridge.wrapper_methods import flow_sample

        return flow_sample(self, data, chains=chains, iter_sampling=iter_sampling, seed=seed,
                           show_progress=show_progress, output_dir=output_dir,
                           num_threads=num_threads, **options)

    def amortize(
        self,
        data: Mapping[str, Any] | str | os.PathLike | None = None,
        num_simulations: int | None = None,
        *,
        observed: Sequence[str] | None = None,
        seed: int | None = None,
        show_progress: bool = True,
        train: bool = True,
        **options: Any,
    ) -> Any:
        """An amortizer for this program, trained on its prior predictive.

        The program must follow the prior-predictive convention (see
        :mod:`stan_bridge.prior`): an ``int<lower=0, upper=1> prior_only``
        data flag that switches the likelihood off, and a generated quantity
        ``<obs>_rep`` drawn with ``_rng`` functions for each observed data
        variable ``<obs>``. Without it, a ``PriorPredictiveError`` says what is
        missing before anything is compiled or trained.

        Parameters
        ----------
        data : dict or path
            The program's data: they fix the shapes and every input that is
            not simulated (sizes, covariates); ``prior_only`` may be left out
            (it is set to 0).
        num_simulations : int, optional
            Prior-predictive simulations to train on (10 000 by default).
        observed : list of str, optional
            The data variables the amortizer conditions on (default: every
            one with a ``<name>_rep`` generated quantity).
        seed : int, optional
            Seeds the simulations and the training.
        show_progress : bool
            Progress bars (build, simulation, training).
        train : bool
            ``False``: return the amortizer untrained (call ``.fit(...)``).
        **options
            The :class:`pymc_ext.Amortizer`'s options (``summary``,
            ``flow_kwargs``, ``summary_kwargs``, ``device``,
            ``num_threads``) and ``fit``'s (``epochs``, ``batch_size``,
            ``validation_fraction``, ``learning_rate``, ``patience``,
            ``max_seconds``, ...).

        Returns
        -------
        StanAmortizer
            A :class:`pymc_ext.Amortizer` whose ``sample``, ``sample_many``,
            ``fit_many`` and ``log_q`` take the program's data dicts (see
            :class:`~stan_bridge.stan_amortizer.StanAmortizer`).

        Examples
        --------
        >>> import numpy as np
        >>> from stan_bridge import CmdStanModel
        >>> from stan_bridge.programs import reference_data, write_program
        >>> model = CmdStanModel(stan_file=write_program("eight_schools"))
        >>> data = reference_data("eight_schools")
        >>> amortizer = model.amortize(data, 500, seed=1, show_progress=False, epochs=2)
        >>> new = {**data, "y": [20.0, 5.0, -3.0, 7.0, -1.0, 1.0, 18.0, 12.0]}
        >>> amortizer.sample(new, draws=100, seed=2).posterior["theta"].shape
        (1, 100, 8)
        """
        from stan_bridge.wrapper_methods import amortize

        return amortize(self, data, num_simulations, observed=observed, seed=seed,
                        show_progress=show_progress, train=train, **options)
