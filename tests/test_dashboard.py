"""The W&B dashboard after a sweep, read back from the offline run files: one group, config columns to group by,
failed jobs marked, killed jobs resumed into the same run, and `sert-report --wandb` with report.md's
tables and figures."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT, run_cli
from test_report import _judged_sweep
from test_tracking import OFFLINE

from wandb_offline import read_offline_runs


def sert_report(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), **OFFLINE}
    proc = subprocess.run([sys.executable, "-m", "sert.report", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def as_markdown(table: dict) -> str:
    """A logged wandb.Table as the markdown table report.md holds."""
    rows = [table["columns"], *table["data"]]
    lines = ["| " + " | ".join(map(str, r)) + " |" for r in rows]
    return "\n".join([lines[0], "|" + "|".join("---" for _ in table["columns"]) + "|", *lines[1:]])


def test_sweep_with_a_broken_job_on_the_dashboard(tmp_path: Path, csqa_files):
    data, split = csqa_files
    out = tmp_path / "out"
    common = ["model=tiny", "device=cpu", f"dataset.path={data}", f"dataset.split_file={split}", "trainer.max_steps=2",
              "trainer.batch_size=2", "trainer.save_strategy=no", "evaluate.max_new_tokens=8",
              "evaluate.label_only_max_new_tokens=4", "logger=wandb", "logger.mode=offline", "experiment_name=dash"]
    run_cli("-m", "stage=finetune,sert", "seed=0,1", *common, "generation.max_new_tokens=30",
            "filter.length.min_tokens=10", "filter.perplexity.min_ppl=0", "filter.rep2.max_rate=1.0", out=out,
            env=OFFLINE)
    broken = out / "broken"
    proc = run_cli("stage=finetune", "seed=2", *common, "evaluate.format=bogus", f"hydra.run.dir={broken}", out=out,
                   env=OFFLINE, check=False)
    assert proc.returncode != 0

    runs = read_offline_runs(out)
    assert len(runs) == 5 and {r["run"]["group"] for r in runs.values()} == {"dash"}
    finished = [r for r in runs.values() if r["exit_code"] == 0]
    (failed,) = [r for r in runs.values() if r["exit_code"] != 0]
    assert len(finished) == 4 and all(r["summary"]["status"] == "ok" for r in finished)
    assert all("status:failed" not in r["run"]["tags"] and "error/type" not in r["summary"] for r in finished)
    assert "status:failed" in failed["run"]["tags"] and failed["exit_code"] == 1
    err = {k: failed["summary"][k] for k in ("status", "error/type", "error/step")}
    assert err == {"status": "failed", "error/type": "ValueError", "error/step": "evaluate"}
    assert "evaluate.format must be one of" in failed["summary"]["error/message"]

    # config columns: top-level scalars beside the nested config, numbers as numbers
    assert sorted((r["config"]["method"], r["config"]["seed"]) for r in finished) == [
        ("finetune", 0), ("finetune", 1), ("sert", 0), ("sert", 1)]
    for r in runs.values():
        cfg = r["config"]
        assert {k: cfg[k] for k in ("model_name", "dataset_name", "filter_preset", "filters", "trainer_name")} == {
            "model_name": "tiny", "dataset_name": "commonsense_qa", "filter_preset": "full",
            "filters": "pattern > length > rep2 > perplexity", "trainer_name": "sft"}
        assert {cfg[k] for k in ("dtype_generate", "dtype_train", "dtype_evaluate")} <= {"bfloat16", "float32"}
        assert cfg["model"]["name"] == "tiny" and cfg["evaluate"]["max_new_tokens"] == 8
        assert cfg["trainer"]["max_steps"] == 2 and cfg["generation"]["samples_per_token"] == 5
    sert_cfg = next(r["config"] for r in finished if r["config"]["method"] == "sert")
    assert sert_cfg["generation"]["max_new_tokens"] == 30 and sert_cfg["filter"]["length"]["min_tokens"] == 10

    # the report run: report.md's tables, in the sweep's group
    sert_report(str(out), "--wandb", "--resamples", "200")
    (report,) = read_offline_runs(out / "wandb_report").values()
    assert report["run"]["job_type"] == "report" and report["run"]["group"] == "dash"
    text = (out / "report.md").read_text()
    for name in ("table2", "seed_by_seed", "paired_differences", "funnel", "failed_runs"):
        assert as_markdown(report["tables"][f"report/{name}"]) in text, name
    t2 = report["tables"]["report/table2"]
    assert [row[:2] for row in t2["data"]] == [["tiny", "Finetune"], ["tiny", "SERT"]]
    assert report["summary"]["runs"] == 5 and report["summary"]["runs_not_ok"] == 1


def test_killed_job_run_again_is_one_finished_run(tmp_path: Path, csqa_files):
    """A job killed outright (SIGKILL: no chance to finish its W&B run) and run again in its directory continues
    the same W&B run, which then ends finished: one run, not a crashed one beside a new one."""
    data, split = csqa_files
    job = tmp_path / "job"
    args = ["stage=data", f"dataset.path={data}", f"dataset.split_file={split}", "model=tiny", "logger=wandb",
            "logger.mode=offline", f"hydra.run.dir={job}"]
    kill = {**OFFLINE, "SERT_KILL_AT": "manifest.step_recorded:1"}
    assert run_cli(*args, out=tmp_path / "out", env=kill, check=False).returncode != 0
    assert json.loads((job / "run.json").read_text())["status"] == "running"  # killed: nothing recorded the end
    ((killed_id, killed),) = read_offline_runs(job).items()
    assert killed["exit_code"] is None  # no end: W&B shows it crashed

    run_cli(*args, out=tmp_path / "out", env=OFFLINE)
    parts = sorted((job / "wandb").glob("offline-run-*"))
    assert len(parts) == 2 and {p.name.rsplit("-", 1)[1] for p in parts} == {killed_id}
    ((run_id, resumed),) = read_offline_runs(job).items()  # one run: its latest part
    assert run_id == resumed["run"]["id"] == killed_id
    assert resumed["exit_code"] == 0 and resumed["summary"]["status"] == "ok"
    assert "status:failed" not in resumed["run"]["tags"] and resumed["summary"]["data/cached"] == 1
    assert json.loads((job / "run.json").read_text())["wandb"]["id"] == killed_id


def test_report_run_has_the_figures_and_no_machine_paths(tmp_path: Path):
    pytest.importorskip("matplotlib")
    root = tmp_path / "sweep"
    _judged_sweep(root)
    sert_report(str(root), "--wandb", "--wandb-group", "g1", "--resamples", "50")
    (report,) = read_offline_runs(root / "wandb_report").values()
    assert report["run"]["group"] == "g1" and report["run"]["job_type"] == "report"
    figures = sorted(p.stem for p in (root / "figures").glob("*.png"))
    assert sorted(report["images"]) == [f"figures/{f}" for f in figures] and len(figures) >= 3
    assert all(p.read_bytes()[:4] == b"\x89PNG" for p in report["images"].values())
    # what a study commits (logs and tmp left out): no path of the report, the checkout or the Python install
    files = [p for p in (root / "wandb_report").rglob("*") if p.is_file() and p.suffix != ".log"
             and "tmp" not in p.parts]
    raw = b"".join(p.read_bytes() for p in files)
    assert not [path for path in (tmp_path, ROOT, sys.prefix) if str(path).encode() in raw]
