"""The Stan warm start falls back to CmdStan's own start when every Pathfinder path fails."""

from __future__ import annotations

import warnings

import pytest
from stan_helpers import write_code

from stan_bridge import CmdStanModel

# The "German tank" model written naively: the support of ub depends on the data
# (ub > max(y) = 7), which the declared bounds do not say, so Pathfinder's random
# starts and its approximations' draws fall where the density is -inf.
TANK = """
data { int N; vector[N] y; }
parameters { real<lower=0, upper=10> ub; }
model { y ~ uniform(0, ub); }
"""




@pytest.mark.slow
def test_every_pathfinder_path_failing_falls_back_to_cmdstans_own_start():
    model = CmdStanModel(stan_file=write_code(TANK, "german_tank"))
    data = {"N": 3, "y": [1.0, 7.0, 3.0]}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fit = model.sample(
            data=data, warmstart="pathfinder", chains=2, seed=1, show_progress=False
        )
    assert any("warm start failed" in str(w.message) for w in caught)
    assert fit.warmstart.fallback and fit.warmstart.inits_files == []
    ub = fit.stan_variable("ub")
    assert ub.min() > 7.0
    # exact: p(ub | y) proportional to ub^-3 on (7, 10), mean 8.235
    assert abs(ub.mean() - 8.235) < 0.25
