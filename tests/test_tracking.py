"""W&B logger: naming/metric helpers, offline runs through the real CLI (single run and multirun), and
W&B failures that must not stop an experiment."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import ROOT, run_cli

from sert.pipeline import StepOutput
from sert.tracking import resolve_mode, run_group, run_name, run_tags, step_metrics
from wandb_offline import read_offline_run

OFFLINE = {"WANDB_MODE": "offline", "WANDB_SILENT": "true"}


# ----------------------------------------------------------------------------- unit
def test_resolve_mode():
    assert resolve_mode("auto", {}) == "offline"
    assert resolve_mode("auto", {"WANDB_API_KEY": "k"}) == "online"
    assert resolve_mode("auto", {"WANDB_API_KEY": "k", "WANDB_MODE": "disabled"}) == "disabled"
    assert resolve_mode("offline", {"WANDB_API_KEY": "k", "WANDB_MODE": "online"}) == "offline"  # explicit wins


def test_run_name_and_tags():
    ch = {"stage": "sert_rd", "model": "gpt2-medium", "dataset": "commonsense_qa", "filter": "full", "logger": "wandb"}
    assert run_name(ch, ["model=gpt2-medium", "logger.mode=offline"], {}) == "sert_rd/gpt2-medium/commonsense_qa"
    assert run_name(ch, ["filter=pattern", "+experiment=x", "logger=wandb"], {}) == \
        "sert_rd/gpt2-medium/commonsense_qa/filter=pattern"
    assert run_name({}, [], {"stage": "data", "model": "tiny", "dataset": "d"}) == "data/tiny/d"
    assert run_tags(ch, {}, ["mine"]) == ["stage:sert_rd", "model:gpt2-medium", "dataset:commonsense_qa",
                                          "filter:full", "mine"]


def test_profile_suffixes_the_group_not_the_name():
    """`experiment=table2 profile=cpu` runs in the W&B group table2_cpu (as the former experiment=table2_cpu)."""
    ch = {"stage": "sert", "model": "smollm2-135m", "dataset": "strategy_qa", "experiment": "table2", "profile": "cpu"}
    assert run_group("table2", ch, "2026-01-01/10-00-00") == "table2_cpu"
    assert run_group("table2", {**ch, "profile": None}, None) == "table2"
    assert run_group(None, ch, "2026-01-01/10-00-00") == "2026-01-01/10-00-00"
    assert run_name(ch, ["experiment=table2", "profile=cpu", "stage=sert"], {}) == "sert/smollm2-135m/strategy_qa"


def test_step_metrics_names(tmp_path: Path):
    ev = StepOutput("evaluate", "k", tmp_path, {"metrics": {"acc": 0.5, "fmt": 1.0, "len": 12.5, "rep": 0.3, "n": 4,
                                                             "note": "text", "bad": float("nan")}, "seconds": 2.0})
    m = step_metrics(ev)
    assert {k: m[k] for k in ("eval/acc", "eval/fmt", "eval/len", "eval/rep", "eval/n")} == \
        {"eval/acc": 0.5, "eval/fmt": 1.0, "eval/len": 12.5, "eval/rep": 0.3, "eval/n": 4}
    assert "eval/note" not in m and "eval/bad" not in m and m["eval/cached"] == 0 and m["eval/seconds"] == 2.0
    funnel = {"funnel": [{"filter": "pattern", "in": 25, "kept": 10}, {"filter": "rep2", "in": 10, "kept": 4}]}
    fl = step_metrics(StepOutput("filter", "k", tmp_path, {"selected": 3, "funnel": funnel,
                                                           "metrics": {"filter/pattern/kept": 10}}, cached=True))
    assert fl["filter/pattern/kept"] == 10 and fl["filter/kept_after_rep2"] == 4 and fl["filter/selected"] == 3
    assert fl["filter/cached"] == 1
    gen = step_metrics(StepOutput("generate", "k", tmp_path, {"metrics": {"generate/tokens": 1000}, "seconds": 4.0}))
    assert gen["generate/tokens_per_s"] == 250.0


# ----------------------------------------------------------------------------- through the CLI
def _data_args(csqa_files) -> list[str]:
    data, split = csqa_files
    return [f"dataset.path={data}", f"dataset.split_file={split}", "model=tiny"]


def _offline_run(run_dir: Path) -> dict:
    files = list((run_dir / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(files) == 1, f"expected one offline run under {run_dir}/wandb, got {files}"
    return read_offline_run(files[0])


def test_offline_run_files(tmp_path: Path, csqa_files):
    out = tmp_path / "out"
    run_cli("stage=data", *_data_args(csqa_files), "logger=wandb", "logger.mode=offline", "logger.tags=[t1]",
            "+dataset.hub_splits.api_key=${oc.env:SERT_TEST_SECRET}", "generation.max_new_tokens=7",
            "filter.length.min_tokens=3", out=out, env={**OFFLINE, "SERT_TEST_SECRET": "s3cr3t-value"})
    (run_dir,) = [p.parent for p in (out / "runs").rglob("run.json")]
    rec = _offline_run(run_dir)
    assert rec["run"]["name"] == "data/tiny/commonsense_qa"
    assert set(rec["run"]["tags"]) >= {"stage:data", "model:tiny", "dataset:commonsense_qa", "t1"}
    assert rec["run"]["group"] == ""  # a single run has no group
    assert rec["config"]["model"]["name"] == "tiny" and rec["config"]["dataset"]["limit"] is None
    assert rec["config"]["dataset"]["hub_splits"]["api_key"] == "***"
    # token-count hyperparameters are not secrets: the dashboard can group and filter by them
    assert rec["config"]["generation"]["max_new_tokens"] == 7 and rec["config"]["filter"]["length"]["min_tokens"] == 3
    assert rec["summary"]["data/records"] == 3 and rec["summary"]["data/cached"] == 0
    assert {"name": f"manifest-{rec['run']['id']}", "type": "manifest"} in rec["artifacts"]
    raw = b"".join(p.read_bytes() for p in (run_dir / "wandb").rglob("*") if p.is_file())
    assert b"s3cr3t-value" not in raw
    assert "s3cr3t-value" not in (run_dir / "run.json").read_text()  # the manifest's command line too
    # the config names no directory of this machine (sert.portable): the outputs and cache become placeholders
    assert str(out) not in json.dumps(rec["config"])  # (the data files given as absolute paths stay as given)
    assert rec["config"]["paths"]["cache_dir"] == "<cache>" and rec["config"]["paths"]["output_dir"] == "<output>"
    assert str(out) not in (run_dir / "wandb" / "run.portable.json").read_text()  # the manifest artifact


def test_multirun_one_group_and_cache_reuse(tmp_path: Path, csqa_files):
    out = tmp_path / "out"
    proc = run_cli("-m", "stage=data", *_data_args(csqa_files)[:2], "model=tiny,gpt2", "logger=wandb",
                   "logger.mode=offline", out=out, env=OFFLINE)
    runs = sorted(p.parent for p in (out / "multiruns").rglob("run.json"))
    assert len(runs) == 2, proc.stdout
    manifests = [json.loads((r / "run.json").read_text()) for r in runs]
    assert [m["choices"]["model"] for m in manifests] == ["tiny", "gpt2"]
    # data does not depend on the model: job 1 reuses job 0's cache entry
    assert [m["steps"][0]["cached"] for m in manifests] == [False, True]
    assert manifests[0]["steps"][0]["key"] == manifests[1]["steps"][0]["key"]
    recs = [_offline_run(r) for r in runs]
    groups = {r["run"]["group"] for r in recs}
    sweep_dir = runs[0].parent
    assert groups == {f"{sweep_dir.parent.name}/{sweep_dir.name}"}
    assert [r["run"]["name"] for r in recs] == ["data/tiny/commonsense_qa", "data/gpt2/commonsense_qa"]
    assert [r["summary"]["data/cached"] for r in recs] == [0, 1]


def test_experiment_name_is_the_group(tmp_path: Path, csqa_files):
    out = tmp_path / "out"
    run_cli("stage=data", *_data_args(csqa_files), "logger.mode=offline", "experiment_name=abl1", out=out, env=OFFLINE)
    (run_dir,) = [p.parent for p in (out / "runs").rglob("run.json")]
    assert _offline_run(run_dir)["run"]["group"] == "abl1"


def test_wandb_init_failure_does_not_stop_the_run(tmp_path: Path, csqa_files):
    """wandb.init raising (no network, bad key) -> warning, run completes, run.json written."""
    out = tmp_path / "out"
    shim = tmp_path / "shim"
    shim.mkdir()
    # sitecustomize runs at interpreter start in the CLI subprocess: make wandb.init raise there.
    (shim / "sitecustomize.py").write_text(
        "import wandb\n"
        "def _boom(*a, **k):\n    raise ConnectionError('simulated: api.wandb.ai unreachable')\n"
        "wandb.init = _boom\n")
    proc = run_cli("stage=data", *_data_args(csqa_files), "logger=wandb", "logger.mode=online", out=out,
                   env={"PYTHONPATH": f"{shim}:{ROOT / 'src'}"})
    assert "W&B logging failed at wandb.init" in proc.stdout + proc.stderr
    assert "simulated: api.wandb.ai unreachable" in proc.stdout + proc.stderr
    (run_dir,) = [p.parent for p in (out / "runs").rglob("run.json")]
    assert json.loads((run_dir / "run.json").read_text())["steps"][0]["summary"]["records"] == 3
    assert not (run_dir / "wandb").exists()


def test_logging_failure_mid_run_is_contained(tmp_path: Path, monkeypatch, caplog):
    """A W&B call raising during log_step disables the logger, restores the env at finish, never raises."""
    import os

    from sert.tracking import WandbLogger

    class BoomRun:
        id = "x"
        finished = False

        def log(self, *_a, **_k):
            raise OSError("disk full")

        def finish(self, **_k):
            self.finished = True

    monkeypatch.delenv("WANDB_MODE", raising=False)
    lg = WandbLogger()
    lg.run = BoomRun()
    with caplog.at_level("WARNING"):
        lg.log_step(StepOutput("data", "k", tmp_path, {"records": 1}))
    assert lg.run is None and "disk full" in caplog.text and os.environ["WANDB_MODE"] == "disabled"
    lg.finish()
    assert "WANDB_MODE" not in os.environ


@pytest.mark.parametrize("mode", ["disabled"])
def test_disabled_mode_writes_nothing(tmp_path: Path, csqa_files, mode):
    out = tmp_path / "out"
    run_cli("stage=data", *_data_args(csqa_files), f"logger.mode={mode}", out=out)
    (run_dir,) = [p.parent for p in (out / "runs").rglob("run.json")]
    assert not (run_dir / "wandb").exists()


def test_tables_do_not_clobber_scalars(tmp_path: Path):
    """`filter/selected` is a count; the selected paths table must live under another key."""
    from sert.artifacts import write_json, write_jsonl
    from sert.tracking import WandbLogger

    write_jsonl(tmp_path / "selected.jsonl", [{"qid": f"q{i}", "text": "t", "rep2": 0.1} for i in range(5)])
    write_json(tmp_path / "filter_stats.json", {"funnel": [{"filter": "pattern", "in": 9, "kept": 5, "dropped": 4,
                                                             "questions_with_path": 5}]})
    out = StepOutput("filter", "k", tmp_path, {"selected": 5, "metrics": {"filter/selected": 5}})
    logged: list[dict] = []

    class Run:
        summary: dict = {}

        def log(self, d):
            logged.append(d)

    lg = WandbLogger(max_table_rows=3)
    lg.run = Run()
    lg.log_step(out)
    scalars, *tables = logged
    assert scalars["filter/selected"] == 5 and Run.summary["filter/selected"] == 5
    table_keys = {k for t in tables for k in t}
    assert table_keys == {"filter/funnel_table", "filter/selected_table"} and not table_keys & set(scalars)
    sel = next(t["filter/selected_table"] for t in tables if "filter/selected_table" in t)
    assert len(sel.data) == 3 and sel.columns == ["qid", "text", "rep2"]
