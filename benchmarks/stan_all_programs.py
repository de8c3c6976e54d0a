"""One table for every reference Stan program: warm-started CmdStan against plain CmdStan.

Joins the results of two benchmark runs over all 31 programs of
``../shared/reference``:

- ``python benchmarks/stan_warmstart.py --programs all --variants plain,warm,warm-diag@200
  --seeds 1 --no-call-cost --tag all`` (leapfrogs, wall time of the sampling call,
  errors against the reference draws, Pareto k, the metric chosen);
- ``python benchmarks/stan_first_run.py --programs all --tag all`` (the first run of a new
  program, compile included, in a fresh process).

Usage::

    python benchmarks/stan_all_programs.py

Writes ``benchmarks/results/stan_all_programs.md``.
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import RESULTS_DIR, fmt, md_row  # noqa: E402

WARMSTART = RESULTS_DIR / "stan_warmstart_all.json"
FIRST_RUN = RESULTS_DIR / "stan_first_run_all.json"


def _row(rows: list[dict[str, Any]], variant: str) -> dict[str, Any] | None:
    return next((r for r in rows if r["variant"] == variant), None)


def table(warm: dict[str, Any], first: dict[str, Any]) -> str:
    """The markdown table, one row per program, with medians and worst cases below."""
    first_by = {r["program"]: r for r in first["rows"]}
    head = [
        "program",
        "dim",
        "Pareto k",
        "metric",
        "warmup",
        "leapfrogs vs plain",
        "grads/ESS vs plain",
        "sampling wall vs plain",
        "first run vs plain",
        "max mean err",
        "max sd err",
        "divergences (plain / warm)",
    ]
    lines = [md_row(head), md_row(["---"] * len(head))]
    cols: dict[str, list[float]] = {"tot": [], "ess": [], "wall": [], "first": []}
    for name, res in sorted(warm["programs"].items()):
        plain, w = _row(res["rows"], "plain"), _row(res["rows"], "warm")
        if plain is None or w is None:
            lines.append(md_row([name, "missing"] + [""] * (len(head) - 2)))
            continue
        tot = w["total_grad_evals"] / plain["total_grad_evals"]
        ess = w["grad_evals_per_ess"] / plain["grad_evals_per_ess"]
        wall = w["wall_time"] / plain["wall_time"]
        fr = first_by.get(name, {}).get("ratio")
        for key, v in (("tot", tot), ("ess", ess), ("wall", wall), ("first", fr)):
            if v is not None:
                cols[key].append(v)
        choice = w.get("metric_choice") or {}
        lines.append(
            md_row(
                [
                    name,
                    fmt(choice.get("dim")),
                    fmt(w.get("pareto_k")),
                    str(w.get("metric", "–")),
                    str(w.get("warmup", "–")),
                    fmt(tot),
                    fmt(ess),
                    fmt(wall),
                    fmt(fr) if fr is not None else first_by.get(name, {}).get("error", "–")[:40],
                    fmt(w["max_mean_error"], 3),
                    fmt(w["max_sd_error"], 3),
                    f"{plain['divergences']} / {w['divergences']}",
                ]
            )
        )
    for label, agg in (("median", statistics.median), ("worst", max)):
        cells = [label, "", "", "", ""]
        cells += [fmt(agg(cols[k])) if cols[k] else "–" for k in ("tot", "ess", "wall", "first")]
        lines.append(md_row(cells + ["", "", ""]))
    return "\n".join(lines)


def main() -> None:
    warm = json.loads(WARMSTART.read_text())
    first = json.loads(FIRST_RUN.read_text())
    text = "\n".join(
        [
            "# Every reference Stan program: warm-started CmdStan against plain CmdStan",
            "",
            f"- `{warm['command']}` ({warm['machine']})",
            f"- `{first['command']}` ({first['machine']})",
            "- `python benchmarks/stan_all_programs.py` (this table)",
            "",
            table(warm, first),
            "",
        ]
    )
    out = RESULTS_DIR / "stan_all_programs.md"
    out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
