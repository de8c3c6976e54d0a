"""The README's demo: a real, short comparison that prints its table and where to read more."""

from __future__ import annotations

import pytest

from pymc_ext.demo import main


@pytest.mark.slow
def test_demo_prints_the_comparison(capsys):
    main(["--draws", "200", "--chains", "2", "--seed", "3"])
    out = capsys.readouterr().out
    assert "pm.sample (PyMC NUTS)" in out and "pymc_ext.sample (warm start)" in out
    assert "Warmup: the warm start spent" in out and "per effective draw" in out
    assert "Read more: docs/warmstart.md" in out
    rows = [line.split() for line in out.splitlines() if line.startswith(("pm.sample", "pymc_ext"))]
    warmstart_cost = [int(r[-8]) for r in rows]  # the "warm start" column
    assert warmstart_cost[0] == 0 and warmstart_cost[1] > 0
    warmup = [int(r[-7]) for r in rows]
    assert warmup[1] < warmup[0]  # tune=75 after Pathfinder against pm.sample's tune=1000
