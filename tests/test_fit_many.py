"""The amortized workflow on many datasets: routing, exactness, and a real dask cluster."""

from __future__ import annotations

import os
import signal
import sys
import threading
import time

import numpy as np
import pytest
import torch
from toy_densities import normal_model as build
from toy_densities import normal_model_posterior_means

import pymc_ext

torch.set_num_threads(1)


def build_from_data(data):
    return build(data["y"])


@pytest.fixture(scope="module")
def amortizer():
    a = pymc_ext.Amortizer(build(np.zeros(6)),
                           flow_kwargs={"transforms": 2, "hidden_features": (32, 32)})
    return a.fit(800, epochs=4, batch_size=128, random_seed=0, progressbar=False)


def datasets(n_typical: int, n_far: int, seed: int = 5) -> list[dict]:
    rng = np.random.default_rng(seed)
    typical = [{"y": rng.normal(0.3, 0.8, 6)} for _ in range(n_typical)]
    far = [{"y": np.full(6, 3.0 + i) + rng.normal(0, 0.3, 6)} for i in range(n_far)]
    return typical + far


def test_routing_sends_a_dataset_far_outside_training_to_exact_mcmc(amortizer):
    data = datasets(3, 1)
    out = amortizer.fit_many(data, draws=500, random_seed=1, progressbar=False)
    table = out.table
    assert list(table.columns) == [
        "route", "reason", "pareto_k", "acceptance", "rhat", "ess", "divergences", "seconds",
        "error",
    ]
    assert set(table["route"][:3]) <= {"psis", "mh"}  # a rough amortizer: some need MH
    assert table["route"][3] in ("mh", "nuts") and "k = " in table["reason"][3]
    assert table["pareto_k"][3] >= 0.7
    assert out.share_mcmc == pytest.approx(table["route"].isin(["mh", "nuts"]).mean())
    # the exact route is exact: the far dataset's posterior is the quadrature one
    post = out.posteriors[3].posterior
    exact = normal_model_posterior_means(data[3]["y"])
    for name in ("mu", "sigma"):
        x = post[name].values
        se = x.std() / np.sqrt(x.size * 0.25)
        assert abs(x.mean() - exact[name]) < 4 * se, (name, x.mean(), exact[name])
    assert list(post["mu"].dims) == ["chain", "draw"]
    assert "obs" in out.posteriors[0].observed_data.dims
    with pytest.raises(ValueError, match="model_builder"):
        amortizer.fit_many(data, client=object(), progressbar=False)


@pytest.mark.slow
def test_local_cluster_gives_the_local_posteriors_and_survives_a_killed_worker(amortizer):
    import cloudpickle
    from distributed import Client, LocalCluster

    for module in (sys.modules[__name__], sys.modules[build.__module__]):
        cloudpickle.register_pickle_by_value(module)  # workers cannot import tests/
    data = datasets(2, 4)
    local = amortizer.fit_many(data, draws=300, random_seed=2, progressbar=False)
    assert (local.table["route"].isin(["mh", "nuts"])).sum() >= 3
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                      dashboard_address=None) as cluster, Client(cluster) as client:
        result = {}
        run = threading.Thread(target=lambda: result.update(out=amortizer.fit_many(
            data, draws=300, random_seed=2, client=client, model_builder=build_from_data,
            progressbar=False)))
        run.start()
        killed = None
        deadline = time.time() + 120
        while killed is None and time.time() < deadline and run.is_alive():
            busy = [w for w, tasks in client.processing().items() if tasks]
            if busy:
                killed = busy[0]
                pid = client.run(os.getpid, workers=[killed])[killed]
                os.kill(pid, signal.SIGKILL)  # a worker dies mid-task; its nanny restarts it
            time.sleep(0.2)
        run.join(timeout=600)
    assert killed is not None, "no task was running to kill a worker under"
    remote = result["out"]
    assert list(remote.table["route"]) == list(local.table["route"])  # no dataset lost
    # The same seeds give the same draws wherever the floating-point environment is the same
    # (bit-identical in every run on the development machine). A fresh CI process showed
    # float32-level differences in one MH dataset, after which accept decisions differ: so the
    # check is the posterior, within Monte Carlo error, not the bits.
    for a, b in zip(local.posteriors, remote.posteriors, strict=True):
        for name in ("mu", "sigma"):
            x, y = a.posterior[name].values, b.posterior[name].values
            se = np.hypot(x.std(), y.std()) / np.sqrt(0.25 * x.size)  # ESS >= a quarter
            assert abs(x.mean() - y.mean()) < 4 * se, (name, x.mean(), y.mean())
