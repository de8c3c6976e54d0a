"""The Stan toolchain: CmdStan found as cmdstanpy finds it, httpstan as the fallback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from stan_bridge import StanModel, ToolchainNotFoundError, find_toolchain
from stan_bridge.programs import PROGRAMS, reference_data

pytestmark = pytest.mark.stan


def test_toolchain_is_cmdstanpys_cmdstan():
    import cmdstanpy

    tc = find_toolchain()
    assert tc.kind == "cmdstan"
    assert os.path.samefile(tc.root, cmdstanpy.cmdstan_path())
    assert tuple(int(v) for v in tc.stan_version.split(".")[:2]) == cmdstanpy.cmdstan_version()
    assert tc.stanc.exists()


def test_bad_toolchain_path_says_how_to_get_one(tmp_path):
    with pytest.raises(ToolchainNotFoundError, match="make cmdstan") as err:
        find_toolchain(tmp_path)
    assert "pip install httpstan" in str(err.value)


def test_no_toolchain_at_all_says_how_to_get_one(tmp_path):
    """With no CmdStan (empty HOME, no $CMDSTAN) and httpstan hidden, the error explains."""
    code = (
        "import sys; sys.modules['httpstan'] = None\n"
        "from stan_bridge.toolchain import find_toolchain, ToolchainNotFoundError\n"
        "try:\n"
        "    find_toolchain()\n"
        "except ToolchainNotFoundError as e:\n"
        "    print('ERROR:', e)\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("CMDSTAN", "STAN_BRIDGE_TOOLCHAIN")}
    env["HOME"] = str(tmp_path)
    env["PYTHONPATH"] = os.getcwd()
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120
    )
    assert "ERROR: No Stan toolchain found" in out.stdout, out.stderr
    assert "make cmdstan" in out.stdout and "pip install httpstan" in out.stdout


@pytest.mark.slow
def test_httpstan_toolchain_gives_the_same_density(monkeypatch):
    """The httpstan wheel's Stan (2.39) through the same shim: the same log density as CmdStan's.

    Built without the precompiled header (one model only), which is the cheaper way here.
    """
    import httpstan  # noqa: F401  (the project's [stan] extra installs it)

    monkeypatch.setenv("STAN_BRIDGE_PCH", "0")
    code, data = PROGRAMS["eight_schools"], reference_data("eight_schools")
    a = StanModel(code, data, toolchain="httpstan", progressbar=False)
    assert a.toolchain.kind == "httpstan" and a.toolchain.stan_version.startswith("2.")
    b = StanModel(code, data, progressbar=False)
    assert a.toolchain.stan_version != b.toolchain.stan_version
    X = np.random.default_rng(0).normal(size=(6, a.dim))
    lp_a, g_a = a.logp_and_grad_batch(X)
    lp_b, g_b = b.logp_and_grad_batch(X)
    np.testing.assert_allclose(lp_a, lp_b, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(g_a, g_b, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(a.unconstrain(a.constrain(X[0])), X[0], atol=1e-12)
    params, sims = a.prior_predictive(20, random_seed=1, progressbar=False)
    assert sims["y"].shape == (20, 8)


def test_programs_compile_with_cmdstans_own_flags():
    """A program's object goes into CmdStan's executable: CmdStan's flags, plus -fPIC only.

    Read from CmdStan's makefiles (as `make STAN_THREADS=true` builds a program), so that the
    object matches CmdStan's threaded main object; ours only add position independence,
    hidden symbols and fewer warnings.
    """
    from stan_bridge.cxx import compile_flags

    tc = find_toolchain()
    recipe = tc.cmdstan_recipe
    assert recipe is not None, tc.recipe_error
    ours = compile_flags(tc, [])
    assert ours[: len(recipe.compile_flags)] == list(recipe.compile_flags)
    added = ours[len(recipe.compile_flags):]
    assert all(f in ("-fPIC", "-fvisibility=hidden") or f.startswith("-Wno-") for f in added)
    assert "-DSTAN_THREADS" in recipe.compile_flags and tc.compiler == recipe.cxx
    # the main object is compiled with the same flags, and the link line is CmdStan's
    main = recipe.main_command(recipe.main_object)
    assert main[1 : 1 + len(recipe.compile_flags)] == list(recipe.compile_flags)
    assert recipe.main_object.name == "main_threads.o"
    assert any("libtbb" in lib for lib in recipe.libraries)
    assert all(Path(t).is_absolute() for t in recipe.libraries if not t.startswith("-"))
