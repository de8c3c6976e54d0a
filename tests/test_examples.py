"""Every script in examples/ runs to the end in its quick mode (as CI runs them)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = sorted((Path(__file__).resolve().parents[1] / "examples").glob("*.py"))


@pytest.mark.slow
@pytest.mark.parametrize("script", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_example_runs_in_quick_mode(script, tmp_path):
    env = {**os.environ, "MPLBACKEND": "Agg", "PYMC_EXT_QUICK": "1"}
    out = tmp_path / f"{script.stem}.png"
    proc = subprocess.run(
        [sys.executable, str(script), "--quick", "--out", str(out)],
        cwd=script.parents[1],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    # every example saves its plots where --out says (several plots: name_<kind>.png)
    assert list(tmp_path.glob(f"{script.stem}*.png")), proc.stdout[-2000:]


def test_there_are_examples():
    assert len(EXAMPLES) >= 1
