"""Bad input gets a clear error, before any long computation; concurrent builds are safe."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid

import numpy as np
import pytest

from stan_bridge import StanCompileError, StanDataError, StanModel, StanModelError
from stan_bridge.programs import PROGRAMS

pytestmark = pytest.mark.stan

ES_DATA = {"J": 3, "y": [1.0, 2.0, 3.0], "sigma": [1.0, 1.0, 2.0], "prior_only": 0}


def _fresh(code: str) -> str:
    """The same program with a unique comment: a cache miss, so nothing is built yet."""
    return f"// {uuid.uuid4().hex}\n{code}"


def _nothing_built(cache) -> bool:
    return not any(cache.glob("models/*/ok")) and not any(cache.glob("pch-*"))


@pytest.fixture(scope="module")
def eight_schools():
    return StanModel(PROGRAMS["eight_schools"], ES_DATA, progressbar=False)


def test_syntax_error_has_stancs_message_and_line(tmp_path):
    bad = tmp_path / "broken.stan"
    bad.write_text("parameters {\n  real mu;\n  real<lower=0> sigma\n}\nmodel { }\n")
    with pytest.raises(StanCompileError) as err:
        StanModel(bad, cache_dir=tmp_path / "cache", progressbar=False)
    msg = str(err.value)
    assert "Syntax error in 'broken.stan', line 4, column 0" in msg, msg
    assert '";" is expected after a top-level variable declaration' in msg
    assert _nothing_built(tmp_path / "cache")


def test_semantic_error_names_the_identifier(tmp_path):
    code = "parameters {\n  real mu;\n}\nmodel {\n  mu ~ normal(0, undefined_scale);\n}\n"
    with pytest.raises(StanCompileError, match="undefined_scale") as err:
        StanModel(code, cache_dir=tmp_path, model_name="sem", progressbar=False)
    assert "Semantic error in 'sem.stan', line 5, column 17" in str(err.value)


def test_no_parameters_is_refused_before_compiling(tmp_path):
    code = _fresh("data { int N; } generated quantities { real z = normal_rng(0, 1); }")
    with pytest.raises(StanModelError, match="no parameters"):
        StanModel(code, {"N": 1}, cache_dir=tmp_path, progressbar=False)
    assert _nothing_built(tmp_path)


def test_missing_data_fields_are_listed_before_compiling(tmp_path):
    code = _fresh(PROGRAMS["eight_schools"])
    with pytest.raises(StanDataError) as err:
        StanModel(code, {"J": 3, "y": [1.0, 2.0, 3.0]}, cache_dir=tmp_path, progressbar=False)
    msg = str(err.value)
    assert "sigma" in msg and "prior_only" in msg and "missing" in msg
    assert _nothing_built(tmp_path)


def test_wrong_number_of_dimensions():
    with pytest.raises(StanDataError, match=r"'y' is declared with 1 dimension.*shape \(3, 1\)"):
        StanModel(
            PROGRAMS["eight_schools"], {**ES_DATA, "y": [[1.0], [2.0], [3.0]]}, progressbar=False
        )


def test_wrong_size_reports_stans_check(eight_schools):
    with pytest.raises(StanDataError, match="y") as err:
        eight_schools.with_data({**ES_DATA, "y": [1.0, 2.0]})
    assert "dims declared=(3)" in str(err.value) and "dims found=(2)" in str(err.value)


def test_constraint_violation_in_data(eight_schools):
    with pytest.raises(StanDataError, match="sigma"):
        eight_schools.with_data({**ES_DATA, "sigma": [1.0, -1.0, 2.0]})
    with pytest.raises(StanDataError, match="prior_only"):
        eight_schools.with_data({**ES_DATA, "prior_only": 2})


def test_non_integer_for_int_and_other_bad_values(eight_schools, tmp_path):
    with pytest.raises(StanDataError, match="'J' is declared int"):
        eight_schools.with_data({**ES_DATA, "J": 2.5})
    with pytest.raises(StanDataError, match="not a rectangular array"):
        eight_schools.with_data({**ES_DATA, "y": [[1.0, 2.0], [3.0]]})
    with pytest.raises(StanDataError, match="strings"):
        eight_schools.with_data({**ES_DATA, "y": ["a", "b", "c"]})
    with pytest.raises(StanDataError, match="does not exist"):
        eight_schools.with_data(tmp_path / "nowhere.json")
    bad_json = tmp_path / "bad.json"
    bad_json.write_text("{not json")
    with pytest.raises(StanDataError, match="not valid JSON"):
        eight_schools.with_data(bad_json)
    # integer-valued floats and NaN/Inf strings from CmdStan JSON are fine
    ok = tmp_path / "ok.json"
    ok.write_text(json.dumps({**ES_DATA, "J": 3.0, "y": [1.0, "NaN", 3.0]}))
    sm = eight_schools.with_data(ok)
    assert np.isnan(sm.data["y"][1]) and sm.data["J"] == 3


def test_missing_stan_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        StanModel(tmp_path / "nope.stan")


def test_bad_points(eight_schools):
    with pytest.raises(ValueError, match=r"shape \(5,\); got \(3,\)"):
        eight_schools.logp(np.zeros(3))
    with pytest.raises(KeyError, match="tau"):
        eight_schools.unconstrain({"mu": 1.0, "theta_trans": np.zeros(3)})
    with pytest.raises(ValueError, match="shape"):
        eight_schools.unconstrain({"mu": 1.0, "tau": 1.0, "theta_trans": np.zeros(4)})
    with pytest.raises(ValueError, match="Cannot unconstrain"):
        eight_schools.unconstrain({"mu": 1.0, "tau": -1.0, "theta_trans": np.zeros(3)})


@pytest.mark.slow
def test_concurrent_builds_share_one_build(tmp_path):
    """Two processes building the same new program at once: one build, both load it."""
    # a small program (a quick compile), new to the cache on every run
    code = _fresh("data { real m; } parameters { real x; } model { x ~ normal(m, 1); }")
    prog = tmp_path / "prog.stan"
    prog.write_text(code)
    data = tmp_path / "data.json"
    data.write_text(json.dumps({"m": 0.5}))
    script = (
        "import sys, numpy as np\n"
        "from stan_bridge import StanModel\n"
        "sm = StanModel(sys.argv[1], sys.argv[2], progressbar=False)\n"
        "print(sm.build.directory, sm.build.cached, repr(sm.logp(np.zeros(sm.dim))))\n"
    )
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", script, str(prog), str(data)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=900) for p in procs]
    for p, (_, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err
    lines = [o.split() for o, _ in outs]
    assert lines[0][0] == lines[1][0]  # same build folder
    assert lines[0][2] == lines[1][2]  # same log density
    assert sorted(line[1] for line in lines) == ["False", "True"]  # built once


def test_failed_build_names_its_log_and_shows_the_tail(tmp_path):
    """The compiler's output goes to a log; a failure names the log and shows its last lines."""
    from stan_bridge import StanBuildError

    code = _fresh("parameters { real x; } model { x ~ normal(0, 1); }")
    with pytest.raises(StanBuildError) as err:
        # a flag that makes every compile fail at once (before any long work)
        StanModel(code, cxxflags=["-include", "no_such_header_xyz.hpp"], cache_dir=tmp_path,
                  progressbar=False)
    msg = str(err.value)
    logs = list((tmp_path / "logs").glob("*.log"))
    assert len(logs) == 1 and f"Full output: {logs[0]}" in msg
    log = logs[0].read_text()
    assert "no_such_header_xyz.hpp: No such file or directory" in log
    tail = msg.split("Last lines of the log:\n", 1)[1].splitlines()
    assert tail[-2:] == log.strip().splitlines()[-2:] == ["compilation terminated.",
                                                          "[exit status 1]"]
    assert "no_such_header_xyz.hpp" in msg.split("Full output")[0]  # the cause, before the tail
    assert not any(tmp_path.glob("models/*/ok"))  # nothing half-built is left as done


@pytest.mark.slow
def test_link_error_of_a_program_names_the_missing_function():
    """A function declared in the program and defined nowhere: the link names it."""
    from stan_bridge import StanBuildError

    code = _fresh(
        "functions { real missing_fn_xyz(real x); }\n"
        "parameters { real x; }\nmodel { target += missing_fn_xyz(x); }\n"
    )
    with pytest.raises(StanBuildError) as err:
        StanModel(code, stanc_options=["--allow-undefined"], progressbar=False)
    msg = str(err.value)
    assert "undefined reference" in msg and "missing_fn_xyz" in msg
    assert "linking" in msg.splitlines()[0]
