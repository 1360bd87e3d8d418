"""Sweeps through Hydra's launcher plugins, as on a cluster: ``hydra/launcher=joblib`` (local worker processes)
and ``hydra/launcher=submitit_local`` (the SLURM launcher's code path, jobs run as local processes).

The same sweep as the basic launcher: 2 seeds x 2 evaluation batch sizes of the tiny base model. Greedy
evaluation does not depend on the seed or the batch size, so the two valid jobs share one cache entry, which
must be built once even when they run at the same time; ``evaluate.batch_size=0`` fails its jobs, which must
be recorded as failed. sert-report must read the sweep exactly as the basic launcher's."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import CSQA_ROWS, run_cli

from sert.artifacts import COMPLETE, read_json
from sert.report import build_report

pytest.importorskip("hydra_plugins.hydra_joblib_launcher")
pytest.importorskip("hydra_plugins.hydra_submitit_launcher")

LAUNCHER_ARGS = {"basic": [], "joblib": ["hydra.launcher.n_jobs=2"], "submitit_local": ["hydra.launcher.timeout_min=5"]}


def sweep(launcher: str, root: Path) -> tuple[Path, object]:
    data, split = root / "csqa.json", root / "csqa.split.json"
    data.write_text(json.dumps(CSQA_ROWS))
    split.write_text(json.dumps({"train": [0, 1, 2], "test": [3]}))
    out = root / "out"
    proc = run_cli("-m", f"hydra/launcher={launcher}", *LAUNCHER_ARGS[launcher], "stage=evaluate", "model=tiny",
                   f"dataset.path={data}", f"dataset.split_file={split}", "logger=none", "seed=1,2",
                   "evaluate.batch_size=1,0", "evaluate.max_new_tokens=4", "evaluate.label_only_max_new_tokens=4",
                   out=out, check=False, env={"HYDRA_FULL_ERROR": "0"})
    (sweep_dir,) = (out / "multiruns").glob("*/*")
    return sweep_dir, proc


def report(sweep_dir: Path) -> str:
    return build_report(sweep_dir, plots=False)[0].read_text().replace(sweep_dir.name, "<sweep>")


@pytest.fixture(scope="module")
def basic(tmp_path_factory) -> str:
    sweep_dir, proc = sweep("basic", tmp_path_factory.mktemp("basic"))
    assert proc.returncode == 1, proc.stderr[-3000:]
    return report(sweep_dir)


@pytest.mark.parametrize("launcher", [pytest.param("joblib", marks=pytest.mark.slow), "submitit_local"])
def test_launcher_sweep_shares_the_cache_records_failures_and_reports_like_basic(launcher, tmp_path, basic):
    sweep_dir, proc = sweep(launcher, tmp_path)
    assert proc.returncode == 1, proc.stderr[-3000:]  # a job failed: the sweep's exit status says so
    runs = {p.parent.name: read_json(p) for p in sweep_dir.glob("*/run.json")}
    assert len(runs) == 4, sorted(runs)
    failed = [r for r in runs.values() if r["status"] == "failed"]
    ok = [r for r in runs.values() if r["status"] == "ok"]
    assert len(failed) == 2 and len(ok) == 2
    assert all(r["error"]["message"] == "evaluate.batch_size must be a positive integer, got 0" for r in failed)
    assert all(r["finished"] for r in failed)
    steps = [r["steps"][0] for r in ok]
    assert steps[0]["key"] == steps[1]["key"]
    assert sorted(s["cached"] for s in steps) == [False, True]  # built once, the other job reused it
    entries = [e for e in (tmp_path / "out/cache/evaluate").iterdir() if e.is_dir()]
    assert len(entries) == 1 and (entries[0] / COMPLETE).exists()
    assert report(sweep_dir) == basic


@pytest.mark.slow
def test_submitit_job_with_two_tasks_trains_like_one_process(tmp_path):
    """``hydra.launcher.tasks_per_node=2``: the job's two tasks become ranks 0 and 1 (from submitit's job
    environment, as under SLURM) and train together: one run.json with 2 processes, one process's losses."""
    from test_distributed import NO_DROPOUT, finetune_args, losses

    data, split = tmp_path / "csqa.json", tmp_path / "csqa.split.json"
    data.write_text(json.dumps([{**r, "question": r["question"] + " Think." * i} for i in range(4) for r in CSQA_ROWS]))
    split.write_text(json.dumps({"train": list(range(12)), "test": [12]}))
    args = finetune_args([f"dataset.path={data}", f"dataset.split_file={split}"])
    assert set(NO_DROPOUT) <= set(args)
    run_cli(*args, out=tmp_path / "one")
    run_cli("-m", "hydra/launcher=submitit_local", "hydra.launcher.tasks_per_node=2", "hydra.launcher.timeout_min=5",
            *args, out=tmp_path / "two")
    (one,) = (tmp_path / "one/runs").rglob("run.json")
    (two,) = (tmp_path / "two/multiruns").rglob("run.json")
    r1, r2 = read_json(one), read_json(two)
    assert r2["status"] == "ok" and r2["processes"] == 2 and r1["processes"] == 1
    l1, l2 = losses(r1["steps"][0]), losses(r2["steps"][0])
    assert len(l1) == 4 and all(abs(a - b) <= 1e-3 * abs(b) for a, b in zip(l2, l1)), (l2, l1)
    assert r2["steps"][1]["summary"]["metrics"] == r1["steps"][1]["summary"]["metrics"]
