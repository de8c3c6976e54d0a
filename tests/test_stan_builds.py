"""Builds: every ODE solver of the toolchain links, and a failed build says why."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from stan_bridge import StanModel
from stan_bridge.cxx import StanBuildError, run_compiler
from stan_bridge.toolchain import find_toolchain

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"

# Exponential decay y' = -k y, y(0) = 1, so y(1) = exp(-k), through every ODE solver of
# Stan 2.27 (CmdStan's toolchain): RK45 (Boost), BDF and Adams (CVODES), the adjoint solver
# (CVODES backwards), the deprecated integrate_ode_bdf, and the Newton algebra solver (KINSOL).
ODE_PROGRAM = """
functions {
  vector decay(real t, vector y, real k) { return -k * y; }
  real[] decay_old(real t, real[] y, real[] theta, real[] x_r, int[] x_i) {
    return { -theta[1] * y[1] };
  }
  vector root(vector y, vector theta, real[] x_r, int[] x_i) { return y - theta; }
}
data {
  real y_obs;
}
transformed data {
  real x_r[0];
  int x_i[0];
}
parameters {
  real<lower=0> k;
}
transformed parameters {
  vector[6] at_one;
  {
    vector[1] y0 = [1.0]';
    array[1] real ts = {1.0};
    at_one[1] = ode_rk45(decay, y0, 0.0, ts, k)[1][1];
    at_one[2] = ode_bdf(decay, y0, 0.0, ts, k)[1][1];
    at_one[3] = ode_adams(decay, y0, 0.0, ts, k)[1][1];
    at_one[4] = ode_adjoint_tol_ctl(decay, y0, 0.0, ts, 1e-8, rep_vector(1e-8, 1), 1e-8,
                                    rep_vector(1e-8, 1), 1e-8, 1e-8, 10000, 150, 1, 2, 2, k)[1][1];
    at_one[5] = integrate_ode_bdf(decay_old, {1.0}, 0.0, ts, {k}, x_r, x_i)[1, 1];
    at_one[6] = exp(-algebra_solver_newton(root, [1.0]', [k]', x_r, x_i)[1]);
  }
}
model {
  k ~ lognormal(0, 1);
  y_obs ~ normal(at_one, 0.1);
}
"""


@pytest.mark.stan
@pytest.mark.slow
def test_every_ode_solver_builds_and_solves():
    toolchain = find_toolchain()
    if not toolchain.stan_version.startswith("2.27"):
        pytest.skip("the program is written for Stan 2.27's solver signatures")
    sm = StanModel(ODE_PROGRAM, {"y_obs": 0.5}, propto=False, progressbar=False)
    for x in (-0.5, 0.0, 0.7):
        k = np.exp(x)
        point = sm.constrain(np.array([x]))
        # every solver agrees with the closed form to its tolerance (1e-6 for RK45)
        np.testing.assert_allclose(point["at_one"], np.exp(-k), atol=1e-5)
        expected = (
            stats.lognorm(1.0).logpdf(k) + x + 6 * stats.norm(np.exp(-k), 0.1).logpdf(0.5)
        )
        lp, grad = sm.logp_and_grad(np.array([x]))
        assert lp == pytest.approx(expected, abs=1e-3)
        assert np.all(np.isfinite(grad))


def test_link_error_names_the_missing_symbol(tmp_path):
    source = tmp_path / "needs.cpp"
    source.write_text('extern "C" double missing_symbol_xyz(double);\n'
                      'extern "C" double f(double x) { return missing_symbol_xyz(x); }\n')
    cmd = [find_toolchain().cxx, "-shared", "-fPIC", "-Wl,--no-undefined",
           "-o", str(tmp_path / "needs.so"), str(source)]
    with pytest.raises(StanBuildError) as err:
        run_compiler(cmd, tmp_path, "a library with a missing symbol")
    message = str(err.value)
    assert "undefined reference" in message and "missing_symbol_xyz" in message


def test_link_error_names_the_missing_library(tmp_path):
    source = tmp_path / "lib.cpp"
    source.write_text('extern "C" double f(double x) { return x; }\n')
    cmd = [find_toolchain().cxx, "-shared", "-fPIC", "-o", str(tmp_path / "lib.so"),
           str(source), "-lno_such_library_xyz"]
    with pytest.raises(StanBuildError, match="no_such_library_xyz"):
        run_compiler(cmd, tmp_path, "a library linked against a missing one")


def test_failed_quiet_build_shows_the_logs_tail(tmp_path):
    log = tmp_path / "build.log"
    script = "for i in $(seq 1 100); do echo warning line $i; done; echo 'fatal: the cause'; exit 3"
    out = subprocess.run(
        ["bash", str(SCRIPTS / "quiet_build.sh"), str(log), "Building a thing", "bash", "-c",
         script],
        capture_output=True, text=True,
    )
    assert out.returncode == 3
    # the terminal shows one line while building, then only the log's last lines
    assert out.stdout.strip() == f"Building a thing; output in {log}"
    assert "fatal: the cause" in out.stderr and "warning line 100" in out.stderr
    assert "warning line 50" not in out.stderr
    assert log.read_text().count("warning line") == 100


def test_quiet_build_success_prints_no_build_output(tmp_path):
    out = subprocess.run(
        ["bash", str(SCRIPTS / "quiet_build.sh"), str(tmp_path / "ok.log"), "Building",
         "bash", "-c", "for i in $(seq 1 500); do echo noise $i; done"],
        capture_output=True, text=True, check=True,
    )
    assert "noise" not in out.stdout + out.stderr
    assert len(out.stdout.splitlines()) == 2


# y_i ~ normal(mu, 1), mu ~ normal(0, 10): the posterior of mu is normal, in closed form.
CONJUGATE_PROGRAM = """
data { int<lower=1> N; vector[N] y; }
parameters { real mu; }
model { mu ~ normal(0, 10); y ~ normal(mu, 1); }
"""


def _conjugate_posterior(y: np.ndarray) -> tuple[float, float]:
    precision = 1 / 10**2 + len(y)
    return float(y.sum() / precision), float(np.sqrt(1 / precision))


@pytest.mark.stan
@pytest.mark.slow
def test_cmdstanmodel_compiles_the_program_once(tmp_path):
    """The executable and the shim's library come from one model.o; nothing compiles twice."""
    import uuid

    from stan_bridge import CmdStanModel

    stan_file = tmp_path / "conjugate.stan"
    stan_file.write_text(f"// {uuid.uuid4().hex}\n{CONJUGATE_PROGRAM}")  # new to the cache
    model = CmdStanModel(stan_file=stan_file)
    build = model.build
    assert build is not None and not build.cached
    assert model.exe_file == str(stan_file.with_suffix(""))  # where cmdstanpy puts its own
    assert Path(model.exe_file).read_bytes() == build.executable.read_bytes()
    record = build.record
    model_o = str(build.directory / "model.o")
    assert model_o in record["executable"]["command"] and "library" not in record
    assert "-DSTAN_THREADS" in record["model_object"]["flags"]
    assert model.exe_info().get("STAN_THREADS") == "true"

    y = np.random.default_rng(3).normal(1.5, 1.0, size=20)
    sm = model.stan_model({"N": 20, "y": y})
    # the library is linked from the same object: no second compile
    assert sm.build.directory == build.directory and sm.build.cached
    record = sm.build.record
    assert model_o in record["library"]["command"]
    assert record["model_object"] == build.record["model_object"]
    again = model.stan_model({"N": 3, "y": [0.0, 1.0, 2.0]})
    assert again.build.cached and again.build.record == record

    # CmdStan's NUTS in that executable samples the right posterior
    fit = model.sample(data={"N": 20, "y": y}, seed=4, chains=2, show_progress=False)
    mu = fit.stan_variable("mu")
    mean, sd = _conjugate_posterior(y)
    assert abs(mu.mean() - mean) < 5 * sd / np.sqrt(500)  # ESS of 2 x 1000 draws >= 500
    assert abs(mu.std() / sd - 1) < 0.15


@pytest.mark.stan
def test_cmdstanpy_compiles_what_stan_bridge_does_not_build(tmp_path):
    from stan_bridge.cmdstan_build import why_cmdstanpy_compiles

    stan_file = tmp_path / "m.stan"
    stan_file.write_text(CONJUGATE_PROGRAM)
    assert why_cmdstanpy_compiles(stan_file) == ""
    assert why_cmdstanpy_compiles(stan_file, cpp_options={"STAN_THREADS": True}) == ""
    assert why_cmdstanpy_compiles(stan_file, stanc_options={"include-paths": ["."]}) == ""
    assert "STAN_OPENCL" in why_cmdstanpy_compiles(stan_file, cpp_options={"STAN_OPENCL": 1})
    assert "O1" in why_cmdstanpy_compiles(stan_file, stanc_options={"O1": True})
    assert "forced" in why_cmdstanpy_compiles(stan_file, force_compile=True)
    assert "user_header" in why_cmdstanpy_compiles(stan_file, user_header="h.hpp")
    # an executable newer than the program: cmdstanpy would not recompile, nor do we
    stan_file.with_suffix("").write_text("")
    assert "newer" in why_cmdstanpy_compiles(stan_file)
