"""The text of :meth:`stan_bridge.flow_fit.StanFlowFit.diagnose`: flow-MCMC diagnostics, in words.

CmdStan's ``diagnose`` checks NUTS's transitions (tree depth, divergences,
E-BFMI) and R-hat and ESS. Flow MCMC has other failure modes, so this text
checks what says whether its draws can be trusted: the flow's global
acceptance (the key diagnostic: a flow that is rarely accepted moves walkers
between modes rarely), the flow's Pareto k against the posterior, the modes
found and the hops between them, divergent local moves, R-hat and bulk ESS
over the walkers, and the warnings of the run. Each problem says what to try.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

__all__ = ["diagnose_text"]

MAX_RHAT = 1.01
MIN_ESS_PER_CHAIN = 10
MIN_GLOBAL_ACCEPTANCE = 0.1
MAX_PARETO_K = 0.7


def _acceptance(figures: dict[str, Any]) -> list[str]:
    glob = float(figures.get("global_acceptance", np.nan))
    local = float(figures.get("local_acceptance", np.nan))
    lines = ["Checking the flow's global acceptance (the key diagnostic):"]
    lines.append(f"Flow proposals accepted: {glob:.3f}; local moves: {local:.3f}.")
    if not glob >= MIN_GLOBAL_ACCEPTANCE:
        lines.append(
            "The flow is a poor proposal: walkers rarely jump, so the weights of separated "
            "modes may be off (each move is still exact). Try more adaptation rounds "
            "(n_rounds=...), a larger flow (flow_kwargs={'hidden_features': (128, 128)}), "
            "or fit='both'."
        )
    else:
        lines.append("The flow moves walkers globally.")
    return lines


def _pareto(figures: dict[str, Any]) -> list[str]:
    k = float(figures.get("flow_pareto_k", np.nan))
    lines = ["", "Checking the flow against the posterior (Pareto k of p / q):"]
    if not np.isfinite(k):
        return lines + ["No Pareto k was computed."]
    if k > MAX_PARETO_K:
        return lines + [
            f"Pareto k {k:.2f} > {MAX_PARETO_K}: the flow misses part of the posterior. The "
            "local moves still explore there; check R-hat and ESS below, and try more "
            "rounds or fit='both' (fit='reverse' for a funnel)."
        ]
    return lines + [f"Pareto k {k:.2f}: the flow covers the posterior."]


def _modes(figures: dict[str, Any]) -> list[str]:
    n_modes = int(figures.get("n_modes", 1))
    hops = int(figures.get("mode_hops", 0))
    lines = ["", "Checking modes:"]
    lines.append(f"{n_modes} mode(s) found; {hops} hop(s) between modes during sampling.")
    shares = figures.get("walker_share_per_mode")
    if n_modes > 1 and shares is not None:
        lines.append("Share of walkers per mode: " + ", ".join(f"{s:.2f}" for s in shares) + ".")
        if hops == 0:
            lines.append(
                "No walker moved between modes: the mode weights come from where the walkers "
                "started, not from the posterior. Run longer or improve the flow."
            )
    return lines


def _divergences(figures: dict[str, Any], draws: int) -> list[str]:
    div = int(figures.get("divergences", 0))
    lines = ["", "Checking local moves for divergences:"]
    if div:
        lines.append(
            f"{div} of {draws} transitions had a divergent local move. The flow's moves are "
            "exact regardless, but many divergences mean the local kernel cannot reach part "
            "of the posterior; try local_kernel='hmc' or fit='reverse' (funnels)."
        )
    else:
        lines.append("No divergent local moves.")
    return lines


def _convergence(summary: pd.DataFrame, chains: int) -> list[str]:
    lines = ["", "Checking R-hat and ESS (walkers as chains):"]
    rhat = summary["R_hat"]
    ess = summary["ESS_bulk"]
    bad_rhat = rhat[rhat > MAX_RHAT]
    low_ess = ess[ess < MIN_ESS_PER_CHAIN * chains]
    if len(bad_rhat):
        lines.append(
            f"R-hat above {MAX_RHAT} for: " + ", ".join(bad_rhat.index[:10])
            + (" ..." if len(bad_rhat) > 10 else "")
            + ". The walkers disagree: run more draws (iter_sampling) or more rounds."
        )
    else:
        lines.append(f"R-hat is at most {MAX_RHAT} for every column.")
    if len(low_ess):
        lines.append(
            f"Bulk ESS below {MIN_ESS_PER_CHAIN} per chain for: "
            + ", ".join(low_ess.index[:10]) + (" ..." if len(low_ess) > 10 else "")
            + ". Run more draws (iter_sampling) or thin less."
        )
    else:
        lines.append("Bulk ESS is satisfactory for every column.")
    return lines


def diagnose_text(
    figures: dict[str, Any], summary: pd.DataFrame, chains: int, draws: int
) -> str:
    """The diagnostics text of a flow-MCMC run.

    Parameters
    ----------
    figures : dict
        The run's figures (``StanFlowFit.figures``).
    summary : pandas.DataFrame
        ``StanFlowFit.summary()`` (``R_hat`` and ``ESS_bulk`` are used).
    chains, draws : int
        Chains (walkers) and draws per chain.

    Returns
    -------
    str

    Examples
    --------
    >>> import pandas as pd
    >>> from stan_bridge.flow_diagnose import diagnose_text
    >>> figures = {"global_acceptance": 0.8, "local_acceptance": 0.6, "flow_pareto_k": 0.3,
    ...            "n_modes": 1, "mode_hops": 0, "divergences": 0, "warnings": []}
    >>> table = pd.DataFrame({"R_hat": [1.0], "ESS_bulk": [5000.0]}, index=["mu"])
    >>> print(diagnose_text(figures, table, 8, 500).splitlines()[4])
    Flow proposals accepted: 0.800; local moves: 0.600.
    """
    lines = [
        "Processing flow MCMC output (pymc_ext.flow_mcmc on the Stan program).",
        f"{chains} chains (walkers) x {draws} draws.",
        "",
    ]
    lines += _acceptance(figures)
    lines += _pareto(figures)
    lines += _modes(figures)
    lines += _divergences(figures, chains * draws)
    lines += _convergence(summary, chains)
    warns = list(figures.get("warnings") or [])
    lines += ["", "Warnings of the run:"]
    lines += [f"- {w}" for w in warns] if warns else ["None."]
    return "\n".join(lines) + "\n"
