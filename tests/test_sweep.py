"""Sweeps: the stage cache under concurrent jobs, multiruns through the real CLI, experiment configs."""

from __future__ import annotations

import re

import contextlib
import json
import multiprocessing as mp
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import ROOT, compose, run_cli

CONF = ROOT / "conf"
EXPERIMENTS = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))


# ----------------------------------------------------------------------------- cache under concurrency
def _race(cache_dir: str, log_path: str, barrier, results, no_lock: bool) -> None:
    """One 'job': wait for the other, then ask for the same cache entry; the build is slow on purpose."""
    from omegaconf import OmegaConf

    from sert import artifacts
    from sert.pipeline import Context

    if no_lock:  # negative control: without the entry lock both jobs build
        artifacts.CacheEntry.lock = lambda self: contextlib.nullcontext()
    ctx = Context(OmegaConf.create({"paths": {"cache_dir": cache_dir}}), Path(cache_dir).parent / "run")

    def build(d: Path) -> dict:
        with open(log_path, "a") as f:  # O_APPEND: one line per build, from any process
            f.write(f"{mp.current_process().name}\n")
        time.sleep(1.0)
        artifacts.write_jsonl(d / "rows.jsonl", ({"i": i, "by": mp.current_process().name} for i in range(3)))
        return {"by": mp.current_process().name}

    barrier.wait()
    out = ctx.cached("slow", {"x": 1}, [], build)
    results.put({"cached": out.cached, "dir": str(out.dir), "text": out.path("rows.jsonl").read_text(),
                 "summary_by": out.summary["by"]})


def _run_race(tmp_path: Path, no_lock: bool = False) -> tuple[list[dict], list[str]]:
    ctx = mp.get_context("fork")
    barrier, results = ctx.Barrier(2), ctx.Queue()
    log_path = tmp_path / "builds.log"
    procs = [ctx.Process(target=_race, name=f"job{i}", args=(str(tmp_path / "cache"), str(log_path), barrier, results,
                                                            no_lock)) for i in range(2)]
    for p in procs:
        p.start()
    outs = [results.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    return outs, log_path.read_text().split()


def test_concurrent_jobs_build_a_cache_entry_once(tmp_path: Path):
    outs, builds = _run_race(tmp_path)
    assert len(builds) == 1, f"built {len(builds)} times: {builds}"
    assert sorted(o["cached"] for o in outs) == [False, True]  # one built, the other waited and reused it
    assert outs[0]["dir"] == outs[1]["dir"] and outs[0]["text"] == outs[1]["text"]
    assert outs[0]["summary_by"] == outs[1]["summary_by"] == builds[0]


def test_race_detector_fails_without_the_lock(tmp_path: Path):
    """The race above is real: with the lock disabled both jobs build (so the test above can fail)."""
    _, builds = _run_race(tmp_path, no_lock=True)
    assert len(builds) == 2


def test_two_cli_jobs_started_together_share_the_entry(tmp_path: Path, csqa_files):
    """Two `sert stage=data` processes on the same data at once: one entry, identical content, one build."""
    data, split = csqa_files
    import os

    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "SERT_OUTPUT_DIR": str(tmp_path / "out"),
           "WANDB_MODE": "disabled"}
    cmd = [sys.executable, "-m", "sert", "stage=data", "model=tiny", f"dataset.path={data}",
           f"dataset.split_file={split}"]
    procs = [subprocess.Popen([*cmd, f"hydra.run.dir={tmp_path}/out/runs/job{i}"], cwd=ROOT, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-3000:]
    steps = [json.loads((tmp_path / f"out/runs/job{i}/run.json").read_text())["steps"][0] for i in range(2)]
    assert steps[0]["key"] == steps[1]["key"] and steps[0]["dir"] == steps[1]["dir"]
    assert sorted(s["cached"] for s in steps) == [False, True]
    entries = list((tmp_path / "out/cache/data").iterdir())
    assert [e.name for e in entries if e.is_dir()] == [steps[0]["key"]]


# ----------------------------------------------------------------------------- experiment configs
def test_experiment_configs_are_global_packages():
    """Every experiment file is a `# @package _global_` override set with a comment saying what it reproduces."""
    assert EXPERIMENTS, "conf/experiment/ is empty"
    def names_group(name: str) -> bool:  # here, or in a sibling experiment file it extends (defaults: - cpu_study)
        text = (CONF / "experiment" / f"{name}.yaml").read_text()
        parents = [p for p in EXPERIMENTS if re.search(rf"^\s*-\s*{re.escape(p)}\s*$", text, re.M)]
        return "experiment_name:" in text or any(names_group(p) for p in parents)

    for name in EXPERIMENTS:
        text = (CONF / "experiment" / f"{name}.yaml").read_text()
        assert text.startswith("# @package _global_"), name
        assert names_group(name), f"{name}: runs of an experiment share a W&B group"


def _stages_present(*names: str) -> bool:
    return all((CONF / "stage" / f"{n}.yaml").exists() for n in names)


# Composing an experiment needs every group it names (stage=sert, filter=..., judge=..., trainer=...),
# which the stage branches (issues 3-5) add: these run once the branches are merged.
@pytest.mark.skipif(not _stages_present("finetune", "sert", "rd", "sert_rd", "judge", "filter"),
                    reason="needs the generate/filter, training and judge stages (issues 3-5): runs after merge")
@pytest.mark.parametrize("profile", [[], ["profile=cpu"]], ids=["", "profile=cpu"])
@pytest.mark.parametrize("name", EXPERIMENTS)
def test_experiment_composes_for_every_job(name: str, profile: list[str]):
    """Compose every job of the experiment's sweep (as the basic sweeper would) against the schema."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.override_parser.overrides_parser import OverridesParser

    import sert.cli  # noqa: F401 - registers the schema and the sert.* resolvers

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = hydra_compose(config_name="config", overrides=[f"experiment={name}", *profile],
                             return_hydra_config=True)
        params = dict(cfg.hydra.sweeper.params or {})
        sweeps = OverridesParser.create().parse_overrides([f"{k}={v}" for k, v in params.items()])
        grid: list[list[str]] = [[]]
        for o in sweeps:
            values = list(o.sweep_string_iterator()) if o.is_sweep_override() else [o.get_value_element_as_str()]
            grid = [g + [f"{o.key_or_group}={v}"] for g in grid for v in values]
        for job in grid:
            job_cfg = hydra_compose(config_name="config", overrides=[f"experiment={name}", *profile, *job])
            sert.cli.check_config(job_cfg)  # and its values pass the checks a run makes first


# What the former experiment=<name>_cpu files set, which `experiment=<name> profile=cpu` must reproduce for every
# key the experiment's steps read (it also sets the rest of the profile: trainer/evaluate/teacher keys in
# experiments without those steps, judge=hf in table2, whose stages do not judge).
CPU_DATA = {"dataset.path": "${paths.shared_dir}/data/${dataset.name}.json", "dataset.limit": 4,
            "dataset.split_file": "${paths.shared_dir}/data/${dataset.name}.split.json", "device": "cpu",
            "generation.max_new_tokens": 48}
CPU_TRAIN = {"trainer.epochs": 1, "trainer.max_steps": 8}
CPU_EVAL = {"evaluate.limit": 4, "evaluate.max_new_tokens": 96,
            "teacher.input": "${sert.abspath:experiments/teacher_cpu/${dataset.name}.jsonl}"}
CPU_JUDGE = {"judge.name": "hf", "judge.model": None, "judge.max_tokens": 64}
FORMER_CPU = {
    "table2": {**CPU_DATA, **CPU_TRAIN, **CPU_EVAL,
               "sweep": {"model": "smollm2-135m", "stage": "finetune,sert,rd,sert_rd",
                         "dataset": "strategy_qa,commonsense_qa"}},
    "fig1_sampling": {**CPU_DATA, **CPU_TRAIN, **CPU_JUDGE, "model.name": "smollm2-135m", "judge.sample": None,
                      "sweep": {"generation.mode": "topk_alternatives,raw", "model": "smollm2-135m"}},
    "fig3_judge": {**CPU_DATA, **CPU_TRAIN, **CPU_EVAL, **CPU_JUDGE,
                   "sweep": {"model": "smollm2-135m", "stage": "rd,sert_rd", "dataset": "commonsense_qa"}},
    "fig4_filter_ablation": {**CPU_DATA, **CPU_JUDGE, "model.name": "smollm2-135m", "judge.sample": None,
                             "sweep": {"filter": "raw,pattern,pattern_length,pattern_length_rep2,full",
                                       "model": "smollm2-135m"}},
}


@pytest.mark.parametrize("name", sorted(FORMER_CPU))
def test_cpu_profile_reproduces_the_former_cpu_experiments(name: str):
    """`sert experiment=X profile=cpu` = the former `experiment=X_cpu`: same sweep, same CPU settings."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from omegaconf import OmegaConf

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = hydra_compose(config_name="config", overrides=[f"experiment={name}", "profile=cpu"],
                            return_hydra_config=True)
    expected = dict(FORMER_CPU[name])
    assert OmegaConf.to_container(cfg.hydra.sweeper.params) == expected.pop("sweep")
    assert cfg.experiment_name == name and cfg.hydra.runtime.choices.profile == "cpu"  # W&B group: <name>_cpu
    for key, value in expected.items():
        node, _, leaf = key.rpartition(".")
        got = OmegaConf.to_container(OmegaConf.select(cfg, node) if node else cfg, resolve=False)[leaf]
        assert got == value, (key, got, value)


# ----------------------------------------------------------------------------- CLI multirun
def test_multirun_over_datasets_one_sweep_dir(tmp_path: Path, csqa_files, sqa_jsonl):
    """`sert -m dataset=...`: one job per dataset in one sweep dir, each job's run.json names its choices."""
    data, split = csqa_files
    out = tmp_path / "out"
    # one fixed override serves every swept dataset through interpolation (no per-job override needed)
    rows = json.loads(data.read_text())
    (tmp_path / "commonsense_qa.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "strategy_qa.jsonl").write_text(sqa_jsonl.read_text())
    run_cli("-m", "stage=data", "model=tiny", "dataset=commonsense_qa,strategy_qa", "logger=none",
            f"dataset.path={tmp_path}/${{dataset.name}}.jsonl", "dataset.split_file=null", out=out)
    runs = sorted(p.parent for p in (out / "multiruns").rglob("run.json"))
    assert len({r.parent for r in runs}) == 1 and len(runs) == 2
    recs = {json.loads((r / "run.json").read_text())["choices"]["dataset"]: json.loads((r / "run.json").read_text())
            for r in runs}
    assert recs["commonsense_qa"]["steps"][0]["summary"]["records"] == 4
    assert recs["strategy_qa"]["steps"][0]["summary"]["records"] == 4


def test_failed_sweep_job_is_recorded_and_the_sweep_goes_on(tmp_path: Path, sqa_jsonl):
    """One cell of a real multirun fails (its dataset file is missing): the next job still runs, the failed
    job's run.json says failed (error, step, overrides), its log has the traceback, the console one line,
    and the process exits 1 at the end."""
    out, missing = tmp_path / "out", tmp_path / "missing.jsonl"
    proc = run_cli("-m", "stage=data", "model=tiny", "logger=none", f"dataset.path={missing},{sqa_jsonl}",
                   out=out, check=False, env={"HYDRA_FULL_ERROR": "0"})
    assert proc.returncode == 1, proc.stderr[-3000:]
    runs = sorted(p.parent for p in (out / "multiruns").rglob("run.json"))
    assert len(runs) == 2
    failed, ok = (json.loads((r / "run.json").read_text()) for r in runs)  # job 0 (missing file), job 1
    assert failed["status"] == "failed" and failed["finished"] and failed["started"]
    assert failed["error"]["type"] == "FileNotFoundError" and failed["error"]["step"] == "data"
    assert str(missing) in failed["error"]["message"]
    assert f"dataset.path={missing}" in failed["overrides"] and "model=tiny" in failed["overrides"]
    assert ok["status"] == "ok" and ok["error"] is None and ok["steps"][0]["summary"]["records"] == 4
    log_text = next(runs[0].glob("*.log")).read_text()
    assert "Traceback (most recent call last)" in log_text and "FileNotFoundError" in log_text
    console = proc.stdout + proc.stderr
    assert "Traceback" not in console
    assert f"[data] FileNotFoundError: dataset.path: no such file {missing}" in proc.stderr
    assert "1 sweep job(s) failed" in proc.stderr and str(runs[0]) in proc.stderr
