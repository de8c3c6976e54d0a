"""The reference posteriors as PyMC models: names, densities, errors, and the Stan programs.

The fast tests build every registered model with PyTensor's FAST_COMPILE mode
(no numba compile), so the whole registry costs seconds. The slow one compiles
one Stan program (the hidden Markov model, the most intricate density) and
compares log densities at reference draws.
"""

from __future__ import annotations

import numpy as np
import pytensor.tensor as pt
import pytest
from scipy.integrate import solve_ivp

from pymc_ext.references.hmm import hmm_log_marginal
from pymc_ext.references.models import PYMC_REFERENCE_NAMES, reference_model
from pymc_ext.references.ode import LotkaVolterraSolve
from pymc_ext.references.posteriors import (
    ALL_REFERENCE_NAMES,
    REFERENCE_NAMES,
    canonical_name,
    load_reference,
    load_reference_data,
    reference_dir,
)

MODE = "FAST_COMPILE"
NEW = [n for n in PYMC_REFERENCE_NAMES if n not in REFERENCE_NAMES]


def _flat_names(name: str, shape: tuple[int, ...]) -> list[str]:
    if shape == ():
        return [name]
    return [f"{name}[{','.join(str(i + 1) for i in idx)}]" for idx in np.ndindex(*shape)]


def _free_shapes(model) -> dict[str, tuple[int, ...]]:
    shapes = model.eval_rv_shapes()
    return {rv.name: tuple(int(s) for s in shapes[rv.name]) for rv in model.free_RVs}


def _value_point(model, flat: dict[str, float]) -> dict[str, np.ndarray]:
    """Reference draw (flat Stan names) -> PyMC value variables (transformed)."""
    point = {}
    for rv, (name, shape) in zip(model.free_RVs, _free_shapes(model).items(), strict=True):
        value = np.array([flat[n] for n in _flat_names(name, shape)]).reshape(shape)
        value_var = model.rvs_to_values[rv]
        transform = model.rvs_to_transforms.get(rv)
        if transform is not None:
            value = transform.forward(pt.as_tensor(value), *rv.owner.inputs).eval(mode=MODE)
        point[value_var.name] = np.asarray(value, dtype=value_var.dtype)
    return point


def _draw(name: str, chain: int = 0, draw: int = 0) -> dict[str, float]:
    return {k: float(v[chain, draw]) for k, v in load_reference(name).items()}


def test_registry_covers_the_wider_set():
    assert len(NEW) >= 12
    assert set(PYMC_REFERENCE_NAMES) <= set(ALL_REFERENCE_NAMES)
    assert set(REFERENCE_NAMES) <= set(PYMC_REFERENCE_NAMES)  # the first eight stay
    on_disk = {p.name for p in reference_dir().iterdir() if (p / "model.stan").exists()}
    assert set(ALL_REFERENCE_NAMES) == on_disk


@pytest.mark.parametrize("name", PYMC_REFERENCE_NAMES)
def test_model_matches_reference_names_and_has_finite_logp(name):
    """The reference draws' names are the model's variables; logp is finite at a draw.

    Every parameter of the wider set's programs is in its draws; of the first eight,
    some draws hold transformed parameters instead (``theta`` of eight schools), which
    are Deterministics here.
    """
    model = reference_model(name)
    ref_names = set(load_reference(name))
    free = {n for name_, shape in _free_shapes(model).items() for n in _flat_names(name_, shape)}
    dets = {
        n
        for d in model.deterministics
        for n in _flat_names(d.name, tuple(int(s) for s in d.shape.eval(mode=MODE)))
    }
    assert ref_names <= free | dets
    if name not in REFERENCE_NAMES:
        assert free == ref_names
    logp = model.compile_logp(mode=MODE)
    if free <= ref_names:
        point = _value_point(model, _draw(name))
    else:  # the draws lack a free variable (theta_trans, f_tilde): the model's own start
        point = model.initial_point()
    lp = logp(point)
    assert np.isfinite(lp)
    # and it prefers the posterior to a point far from it (3 units off on the unconstrained scale)
    far = {k: v - 3.0 for k, v in point.items()}
    assert logp(far) < lp - 10.0


def test_canonical_names_short_and_ambiguous():
    assert canonical_name("kidiq") == "kidiq-kidscore_momiq"  # the first eight keep theirs
    assert canonical_name("hudson_lynx_hare") == "hudson_lynx_hare-lotka_volterra"
    with pytest.raises(KeyError, match="several reference posteriors"):
        canonical_name("kidiq_with_mom_work")
    with pytest.raises(KeyError, match="Unknown reference posterior"):
        canonical_name("no_such_posterior")


def test_bad_data_is_named_before_building():
    data = load_reference_data("nes1996-nes")
    del data["income"]
    with pytest.raises(ValueError, match=r"lack \['income'\]"):
        reference_model("nes1996-nes", data)
    hmm = load_reference_data("bball_drive_event_1-hmm_drive_1")
    with pytest.raises(ValueError, match="two hidden states"):
        reference_model("bball_drive_event_1-hmm_drive_1", {**hmm, "K": 3})
    ode = load_reference_data("hudson_lynx_hare-lotka_volterra")
    with pytest.raises(ValueError, match="ts needs shape"):
        reference_model("hudson_lynx_hare-lotka_volterra", {**ode, "ts": ode["ts"][:-1]})


def test_standardisation_uses_stans_sd():
    """``sd`` in Stan divides by N - 1: beta[2] of interaction_z is per 2 sample sds."""
    data = load_reference_data("kidiq_with_mom_work-kidscore_interaction_z")
    model = reference_model("kidiq_with_mom_work-kidscore_interaction_z", data)
    iq = np.asarray(data["mom_iq"], float)
    z = (iq - iq.mean()) / (2 * iq.std(ddof=1))
    beta = np.array([0.0, 0.0, 1.0, 0.0])
    logp = model.compile_logp(mode=MODE, vars=[model["kid_score"]])
    point = {"beta": beta, "sigma_log__": np.array(0.0)}
    expected = -0.5 * np.sum((np.asarray(data["kid_score"]) - z) ** 2) - 0.5 * len(z) * np.log(
        2 * np.pi
    )
    assert logp(point) == pytest.approx(expected, rel=1e-12)


def test_forward_algorithm_equals_the_recursion():
    """The tree of matrix products is Stan's forward recursion, even where scales differ wildly."""
    from scipy.special import logsumexp

    rng = np.random.default_rng(3)
    for n in (1, 2, 7, 416):
        e = rng.normal(scale=30.0, size=(n, 2)) - 500.0  # would underflow without rescaling
        T = rng.dirichlet([2.0, 2.0], size=2)
        g = e[0]
        for t in range(1, n):
            g = logsumexp(g[:, None] + np.log(T), axis=0) + e[t]
        out = hmm_log_marginal(pt.as_tensor(e), pt.as_tensor(T), n).eval(mode=MODE)
        assert out == pytest.approx(logsumexp(g), rel=1e-12, abs=1e-9)


def test_ode_solution_and_sensitivities_against_scipy():
    """RK4 solution to ~1e-11 of DOP853 at 1e-13; sensitivities against finite differences."""
    ts = np.arange(1.0, 21.0)
    solve = LotkaVolterraSolve(ts)
    ref = load_reference("hudson_lynx_hare-lotka_volterra")
    theta = np.array([ref[f"theta[{i}]"][3, 7] for i in range(1, 5)])
    z0 = np.array([ref[f"z_init[{i}]"][3, 7] for i in (1, 2)])

    def rhs(t, y):
        a, b, g, d = theta
        return [(a - b * y[1]) * y[0], (-g + d * y[0]) * y[1]]

    exact = solve_ivp(rhs, (0, 20), z0, method="DOP853", t_eval=ts, rtol=1e-13, atol=1e-13).y.T
    z, dz = (out.eval(mode=MODE) for out in solve(pt.as_tensor(z0), pt.as_tensor(theta)))
    assert np.max(np.abs(np.log(z) - np.log(exact))) < 1e-8
    params = np.concatenate([z0, theta])
    for j in range(6):
        step = 1e-6 * max(1.0, abs(params[j]))
        hi, lo = params.copy(), params.copy()
        hi[j] += step
        lo[j] -= step
        z_hi = solve(pt.as_tensor(hi[:2]), pt.as_tensor(hi[2:]))[0].eval(mode=MODE)
        z_lo = solve(pt.as_tensor(lo[:2]), pt.as_tensor(lo[2:]))[0].eval(mode=MODE)
        fd = (z_hi - z_lo) / (2 * step)
        np.testing.assert_allclose(dz[:, :, j], fd, rtol=1e-5, atol=1e-6 * np.abs(fd).max())


@pytest.mark.slow
@pytest.mark.stan
def test_hmm_log_density_equals_stan_program():
    """PyMC minus Stan log density is one constant at reference draws (one Stan compile)."""
    from stan_bridge import StanModel

    name = "bball_drive_event_1-hmm_drive_1"
    folder = reference_dir() / name
    sm = StanModel(
        folder / "model.stan", str(folder / "data.json"), propto=False, progressbar=False
    )
    model = reference_model(name)
    logp_jac = model.compile_logp(mode=MODE)
    logp_raw = model.compile_logp(mode=MODE, jacobian=False)
    diffs_jac, diffs_raw = [], []
    for chain, draw in [(0, 0), (2, 100), (4, 500), (7, 250), (9, 999)]:
        flat = _draw(name, chain, draw)
        point = {p: np.array([flat[f"{p}[1]"], flat[f"{p}[2]"]]) for p in sm.info["parameters"]}
        x = sm.unconstrain(point)
        values = _value_point(model, flat)
        diffs_jac.append(logp_jac(values) - sm.logp(x))
        diffs_raw.append(logp_raw(values) - sm.log_density(x, jacobian=False))
    assert np.ptp(diffs_jac) < 1e-6, diffs_jac
    assert np.ptp(diffs_raw) < 1e-6, diffs_raw
