"""Benchmark: the first run of a new Stan program, compile included.

For each program, two measurements, each in a fresh Python process, in a fresh
temporary folder holding a fresh copy of the program (cmdstanpy puts the
executable beside the ``.stan`` file) and with a fresh, empty
``STAN_BRIDGE_CACHE``:

- ``plain``: ``cmdstanpy.CmdStanModel(stan_file=...)`` then
  ``.sample(data=..., seed=1)`` (cmdstanpy's defaults: 4 chains, 1000 warmup,
  1000 draws);
- ``warm``: ``stan_bridge.CmdStanModel(stan_file=...)`` then
  ``.sample(data=..., seed=1, warmstart="pathfinder")``: the CmdStan
  executable, our shim's library, Pathfinder and CmdStan's NUTS.

The time is the wall time of those two calls (imports excluded; they are
reported apart). The ratio is warm / plain; the table gives it per program and
its median.

``--toolchain-objects`` says what the fresh cache starts with:

- ``cold``: nothing (every build product is made in the measurement, the
  per-toolchain ones too: precompiled headers, the shim's object, the
  threaded ``main.o``, position-independent SUNDIALS);
- ``prepared`` (default): the per-toolchain build products, made once before
  the measurements by building one small ODE program (the time it took is
  reported), copied into each fresh cache. Every per-program product is still
  built inside the measurement. This is the case of a user's second and later
  programs, and matches plain CmdStan, whose ``main.o``, precompiled header
  and SUNDIALS archives are made by CmdStan's own install (``make build``).

``--stan-bridge PATH`` runs another copy of the ``stan_bridge`` package (the
folder that holds it goes first on ``PYTHONPATH``): this is how the "before"
figures were made, from a copy of the package as it was.

``--baseline PATH`` also measures the warm-started run with another copy of the
package (as ``--stan-bridge``), in the same run, so that both meet the same
load on a shared machine: a before/after comparison.

``--check-exe`` also samples with the executable stan_bridge built (no warm
start, ``seed=1``) and compares its draws with plain cmdstanpy's: ``same``
means equal to the last digit CmdStan writes (NaN where both are NaN).

Writes ``benchmarks/results/stan_first_run[_TAG].md`` and ``.json``.

Usage::

    python benchmarks/stan_first_run.py                      # the six programs
    python benchmarks/stan_first_run.py --programs eight_schools,arK --check-exe
    python benchmarks/stan_first_run.py --toolchain-objects cold --tag cold
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.append(str(ROOT))  # after PYTHONPATH: --stan-bridge can come first

from benchmarks.common import (  # noqa: E402
    RESULTS_DIR,
    fmt,
    full_reference_name,
    machine_info,
    md_row,
    write_json,
)

REFERENCES = Path(os.environ.get("STAN_REFERENCES", ROOT.parent / "shared" / "reference"))

DEFAULT_PROGRAMS = (
    "eight_schools-eight_schools_noncentered",
    "arK-arK",
    "kidiq-kidscore_momhsiq",
    "gp_pois_regr-gp_pois_regr",
    "bball_drive_event_1-hmm_drive_1",
    "hudson_lynx_hare-lotka_volterra",
)

# A program with an ODE solver: preparing the toolchain objects with it builds
# the position-independent SUNDIALS too.
_PREPARE_PROGRAM = """
functions { vector f(real t, vector y, real k) { return -k * y; } }
parameters { real<lower=0> k; }
model {
  k ~ lognormal(0, 1);
  target += normal_lpdf(ode_bdf(f, [1.0]', 0.0, {1.0}, k)[1][1] | 0.5, 0.1);
}
"""

# --- one measurement (runs in its own process) ---------------------------------------------


def _measure(mode: str, stan_file: Path, data: Path, out: Path) -> dict[str, Any]:
    """Construct and sample; return the timings (and the draws, for ``--check-exe``)."""
    import logging

    import numpy as np

    t_import = time.perf_counter()
    import cmdstanpy

    logging.getLogger("cmdstanpy").setLevel(logging.ERROR)
    if mode == "plain":
        cls = cmdstanpy.CmdStanModel
        kwargs: dict[str, Any] = {}
    else:
        from stan_bridge import CmdStanModel as cls

        kwargs = {"warmstart": "pathfinder"} if mode == "warm" else {}
    import_s = time.perf_counter() - t_import
    t0 = time.perf_counter()
    model = cls(stan_file=str(stan_file))
    t1 = time.perf_counter()
    fit = model.sample(data=str(data), seed=1, show_progress=False, **kwargs)
    t2 = time.perf_counter()
    draws = fit.draws(concat_chains=True)
    np.save(out / f"draws_{mode}.npy", draws)
    record: dict[str, Any] = {
        "mode": mode,
        "import_s": import_s,
        "construct_s": t1 - t0,
        "sample_s": t2 - t1,
        "total_s": t2 - t0,
        "exe": str(model.exe_file),
    }
    build = getattr(model, "build", None)
    if build is not None:
        record["build"] = {k: v for k, v in build.record.items() if isinstance(v, dict)}
        for step in record["build"].values():
            step.pop("flags", None)
    if mode == "warm":
        info = fit.warmstart
        record["warmstart_s"] = float(getattr(info, "seconds", float("nan")))
        record["iter_warmup"] = int(getattr(info, "iter_warmup", 0))
        sm = model.stan_model(str(data), seed=1)
        record["library"] = str(sm.build.library)
        record["library_build_s"] = float(sm.build.seconds)
    return record


# --- the driver --------------------------------------------------------------------------


def _child(args: list[str], env: dict[str, str], timeout: float) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, __file__, *args], capture_output=True, text=True, env=env, timeout=timeout
    )
    if proc.returncode != 0:
        raise RuntimeError(f"measurement {args} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _environment(stan_bridge_path: Path | None, cache: Path) -> dict[str, str]:
    env = dict(os.environ)
    paths = [str(ROOT)]
    if stan_bridge_path is not None:
        paths.insert(0, str(stan_bridge_path))
    env["PYTHONPATH"] = os.pathsep.join([*paths, env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["STAN_BRIDGE_CACHE"] = str(cache)
    return env


def _prepare(stan_bridge_path: Path | None, cache: Path) -> float:
    """Make the per-toolchain build products in ``cache``; return the seconds it took."""
    code = (
        "import pathlib, sys, tempfile, time\n"
        "t0 = time.perf_counter()\n"
        "from stan_bridge import StanModel\n"
        "StanModel(sys.argv[1], progressbar=False)\n"
        "import stan_bridge\n"
        "if (pathlib.Path(stan_bridge.__path__[0]) / 'cmdstan_build.py').exists():\n"
        "    from stan_bridge.cmdstan_build import shared_executable\n"
        "    prog = pathlib.Path(tempfile.mkdtemp()) / 'prepare.stan'\n"
        "    prog.write_text(sys.argv[1])\n"
        "    assert shared_executable(prog, progressbar=False) is not None\n"
        "print(time.perf_counter() - t0)\n"
    )
    env = _environment(stan_bridge_path, cache)
    proc = subprocess.run(  # not in the repository: `-c` puts the working folder first
        [sys.executable, "-c", code, _PREPARE_PROGRAM],
        capture_output=True, text=True, env=env, timeout=3600, cwd=cache,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"preparing the toolchain objects failed:\n{proc.stderr[-3000:]}")
    return float(proc.stdout.strip().splitlines()[-1])


def _seed_cache(prepared: Path | None, cache: Path) -> None:
    """Copy the per-toolchain products (everything but program builds and locks) into ``cache``."""
    if prepared is None:
        return
    for entry in prepared.iterdir():
        if entry.name == "models" or entry.suffix == ".lock":
            continue
        if entry.is_dir():
            shutil.copytree(entry, cache / entry.name, symlinks=True)
        else:
            shutil.copy2(entry, cache / entry.name)


def _one_program(name: str, opts: argparse.Namespace, prepared: Path | None) -> dict[str, Any]:
    folder = REFERENCES / name
    row: dict[str, Any] = {"program": name}
    modes = ["plain", "warm"] + (["exe"] if opts.check_exe else [])
    modes += ["baseline"] if opts.baseline is not None else []
    for mode in modes:
        with tempfile.TemporaryDirectory(prefix="stan_first_run_") as tmp:
            tmp = Path(tmp)
            work, cache = tmp / "work", tmp / "cache"
            work.mkdir()
            cache.mkdir()
            _seed_cache(prepared, cache)
            stan_file = work / "model.stan"
            shutil.copy(folder / "model.stan", stan_file)
            package = opts.baseline if mode == "baseline" else opts.stan_bridge
            env = _environment(package, cache)
            run = "warm" if mode == "baseline" else mode  # the baseline's warm start
            args = ["--one", run, str(stan_file), str(folder / "data.json"), str(work)]
            try:
                row[mode] = _child(args, env, timeout=opts.timeout)
            except (RuntimeError, subprocess.TimeoutExpired) as err:
                row["error"] = f"{mode}: {err}"
                print(f"  {name} {mode} FAILED:\n{err}", flush=True)
                return row
            if mode in ("plain", "exe"):
                shutil.copy(work / f"draws_{mode}.npy", opts.scratch / f"{name}_{mode}.npy")
        print(f"  {name} {mode}: {row[mode]['total_s']:.1f} s", flush=True)
    row["ratio"] = row["warm"]["total_s"] / row["plain"]["total_s"]
    if "baseline" in row:
        row["baseline_ratio"] = row["baseline"]["total_s"] / row["plain"]["total_s"]
    if opts.check_exe:
        import numpy as np

        a = np.load(opts.scratch / f"{name}_plain.npy")
        b = np.load(opts.scratch / f"{name}_exe.npy")
        # NaN where both have NaN (generated quantities of a stuck chain) counts as equal
        row["exe_same_draws"] = bool(a.shape == b.shape and np.array_equal(a, b, equal_nan=True))
    return row


def _table(rows: list[dict[str, Any]], toolchain_objects: str, prepare_s: float | None) -> str:
    head = ["program", "plain cmdstanpy (s)", "warm-started stan_bridge (s)", "ratio"]
    head += ["of which: constructor (s)", "library (s)", "Pathfinder (s)", "CmdStan NUTS (s)"]
    check = any("exe_same_draws" in r for r in rows)
    if check:
        head += ["stan_bridge exe: sampling (s)", "its draws = CmdStan's"]
    baseline = any("baseline_ratio" in r for r in rows)
    if baseline:
        head += ["baseline warm-started (s)", "baseline ratio"]
    lines = [md_row(head), md_row(["---"] * len(head))]
    for r in rows:
        if "error" in r:
            lines.append(md_row([r["program"], "failed: " + r["error"].splitlines()[0][:60]]
                                + [""] * (len(head) - 2)))
            continue
        w = r["warm"]
        lib = w.get("library_build_s") or 0.0
        pathfinder = w.get("warmstart_s") or 0.0
        cells = [
            r["program"],
            fmt(r["plain"]["total_s"], 1),
            fmt(w["total_s"], 1),
            fmt(r["ratio"], 2),
            fmt(w["construct_s"], 1),
            fmt(lib, 1),
            fmt(pathfinder, 1),
            fmt(w["sample_s"] - lib - pathfinder, 1),
        ]
        if check:
            same = r.get("exe_same_draws")
            cells += [fmt(r["exe"]["sample_s"], 1), "same" if same else "differ"]
        if baseline:
            cells += [fmt(r["baseline"]["total_s"], 1), fmt(r["baseline_ratio"], 2)]
        lines.append(md_row(cells))
    median = statistics.median(r["ratio"] for r in rows if "ratio" in r)
    lines.append("")
    lines.append(f"Median ratio: **{median:.2f}** (target <= 1.3).")
    if baseline:
        base = statistics.median(r["baseline_ratio"] for r in rows if "baseline_ratio" in r)
        lines.append(f"Median ratio of the baseline package: {base:.2f}.")
    what = {"cold": "an empty cache (per-toolchain objects built in each measurement)",
            "prepared": "per-program builds from scratch; per-toolchain objects prepared once"}
    lines.append(f"Caches: {what[toolchain_objects]}.")
    if prepare_s is not None:
        lines.append(f"Preparing the per-toolchain objects took {prepare_s:.0f} s (once).")
    lines.append(f"Machine: {machine_info()}.")
    return "\n".join(lines)


def _write(out: dict[str, Any], suffix: str) -> str:
    table = _table(out["rows"], out["toolchain_objects"], out["prepare_s"])
    write_json(out, RESULTS_DIR / f"stan_first_run{suffix}.json")
    md = f"# First run of a new Stan program\n\n`{out['command']}`\n\n{table}\n"
    (RESULTS_DIR / f"stan_first_run{suffix}.md").write_text(md)
    return table


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark (see the module's docstring)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--programs", default=",".join(DEFAULT_PROGRAMS))
    p.add_argument("--toolchain-objects", choices=("prepared", "cold"), default="prepared")
    p.add_argument("--stan-bridge", type=Path, default=None,
                   help="folder holding another copy of the stan_bridge package")
    p.add_argument("--check-exe", action="store_true")
    p.add_argument("--baseline", type=Path, default=None,
                   help="folder holding a baseline stan_bridge package, measured alongside")
    p.add_argument("--tag", default="")
    p.add_argument("--timeout", type=float, default=1800.0)
    p.add_argument("--render", type=Path, default=None,
                   help="only write the table again from a results JSON of this script")
    opts = p.parse_args(argv)
    if opts.render is not None:
        print(_write(json.loads(opts.render.read_text()), opts.render.stem[len("stan_first_run"):]))
        return
    listed = (sorted(d.name for d in REFERENCES.iterdir() if (d / "model.stan").is_file())
              if opts.programs == "all" else opts.programs.split(","))
    names = [n if (REFERENCES / n).is_dir() else full_reference_name(n) for n in listed]
    rows = []
    with tempfile.TemporaryDirectory(prefix="stan_first_run_prep_") as prep:
        prepared, prepare_s = None, None
        opts.scratch = Path(prep) / "draws"
        opts.scratch.mkdir()
        if opts.toolchain_objects == "prepared":
            prepared = Path(prep) / "cache"
            prepared.mkdir()
            prepare_s = _prepare(opts.stan_bridge, prepared)
            if opts.baseline is not None:  # its own per-toolchain objects, beside ours
                _prepare(opts.baseline, prepared)
            kept = sorted(e.name for e in prepared.iterdir() if e.name not in ("models", "logs"))
            print(f"per-toolchain objects prepared in {prepare_s:.0f} s: {kept}", flush=True)
        suffix = f"_{opts.tag}" if opts.tag else ""
        command = "python benchmarks/stan_first_run.py " + " ".join(argv or sys.argv[1:])
        out = {"command": command.strip(), "machine": machine_info(), "rows": rows,
               "prepare_s": prepare_s, "toolchain_objects": opts.toolchain_objects}
        for name in names:
            rows.append(_one_program(name, opts, prepared))
            _write(out, suffix)  # after each program: a crash keeps what was measured
    print(_write(out, suffix))


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--one":
        mode, stan_file, data, out = sys.argv[2:6]
        print(json.dumps(_measure(mode, Path(stan_file), Path(data), Path(out)), default=str))
    else:
        main()
