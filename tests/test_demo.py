"""The README's demo: a real, short comparison that prints its table and where to read more."""

from __future__ import annotations

import pytest

from pymc_ext.demo import RUNS, main


@pytest.mark.slow
def test_demo_prints_the_comparison(capsys):
    main(["--draws", "200", "--chains", "2", "--seed", "3"])
    out = capsys.readouterr().out
    for name in RUNS:
        assert name in out
    assert "Against your default (pm.sample() with nutpie)" in out
    assert "the wall time per effective draw" in out and "Read more: docs/warmstart.md" in out
    rows = {
        name: line[len(name) :].split()
        for name in RUNS
        for line in out.splitlines()
        if line.startswith(name)
    }
    # the warm start's metric is named (dense where Pathfinder saw kidiq's correlation, diag
    # where it fell back)
    assert rows[RUNS[2]][0] in ("dense", "diag", "lowrank")
    grads_per_ess = {name: float(cols[-2]) for name, cols in rows.items()}
    assert grads_per_ess[RUNS[2]] < grads_per_ess[RUNS[0]]
    assert grads_per_ess[RUNS[3]] < 1.2 * grads_per_ess[RUNS[1]]  # never worse (MC noise)
