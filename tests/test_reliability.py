"""Failure paths of a run: status in run.json, one-line errors, killed jobs, packaging, clear messages."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import run_cli, run_dirs


def _manifest(out: Path) -> dict:
    (run,) = run_dirs(out)
    return json.loads((run / "run.json").read_text())


# ----------------------------------------------------------------------------- job status and errors
def test_ok_run_records_status_times_and_overrides(tmp_path, sqa_jsonl):
    run_cli("stage=data", "model=tiny", "logger=none", f"dataset.path={sqa_jsonl}", out=tmp_path / "out")
    m = _manifest(tmp_path / "out")
    assert m["status"] == "ok" and m["error"] is None
    assert m["started"] <= m["finished"]
    assert m["overrides"] == ["stage=data", "model=tiny", "logger=none", f"dataset.path={sqa_jsonl}"]


def test_user_error_is_one_line_and_the_log_has_the_traceback(tmp_path):
    out = tmp_path / "out"
    proc = run_cli("stage=data", "model=tiny", "logger=none", f"dataset.path={tmp_path}/nope.jsonl", out=out,
                   check=False, env={"HYDRA_FULL_ERROR": "0"})
    assert proc.returncode == 1
    assert "Traceback" not in proc.stdout + proc.stderr
    assert f"[data] FileNotFoundError: dataset.path: no such file {tmp_path}/nope.jsonl" in proc.stderr
    m = _manifest(out)
    assert m["status"] == "failed" and m["error"]["step"] == "data"
    (log_file,) = run_dirs(out)[0].glob("*.log")
    assert "Traceback (most recent call last)" in log_file.read_text()


def test_hydra_full_error_gives_the_traceback(tmp_path):
    proc = run_cli("stage=data", "model=tiny", "logger=none", f"dataset.path={tmp_path}/nope.jsonl",
                   out=tmp_path / "out", check=False, env={"HYDRA_FULL_ERROR": "1"})
    assert proc.returncode == 1
    assert "Traceback (most recent call last)" in proc.stderr and "FileNotFoundError" in proc.stderr


def test_killed_job_stays_running_without_finish_time(tmp_path, sqa_jsonl):
    out = tmp_path / "out"
    proc = run_cli("stage=data", "model=tiny", "logger=none", f"dataset.path={sqa_jsonl}", out=out, check=False,
                   env={"SERT_KILL_AT": "manifest.step_recorded:1"})
    assert proc.returncode == -9
    m = _manifest(out)
    assert m["status"] == "running" and m["finished"] is None and m["error"] is None
    assert [s["step"] for s in m["steps"]] == ["data"]


def test_unexpected_error_keeps_its_traceback(tmp_path):
    """A bug (here: a filter whose _target_ builds a plain dict, which has no .check) is not dressed up as
    a one-line user error: the console shows the traceback; run.json still records the failure."""
    cands = tmp_path / "c.jsonl"
    cands.write_text(json.dumps({"qid": "q", "text": "t", "token_ids": [1], "num_tokens": 1, "ppl": 9.0}) + "\n")
    out = tmp_path / "out"
    proc = run_cli("stage=filter", "model=tiny", "logger=none", f"filter.input={cands}",
                   "filter.pattern._target_=builtins.dict", out=out, check=False, env={"HYDRA_FULL_ERROR": "0"})
    assert proc.returncode == 1
    assert "Traceback" in proc.stderr and "AttributeError: 'dict' object has no attribute 'check'" in proc.stderr
    m = _manifest(out)
    assert m["status"] == "failed" and m["error"]["type"] == "AttributeError" and m["error"]["step"] == "filter"


def test_user_errors_and_bugs_are_told_apart():
    from sert.cli import is_user_error
    from sert.data import DataError
    from sert.llm_client import FatalAPIError

    assert all(is_user_error(e) for e in (ValueError("x"), DataError("x"), FileNotFoundError("x"),
                                           FatalAPIError("x"), json.JSONDecodeError("x", "", 0)))
    assert not any(is_user_error(e) for e in (KeyError("x"), RuntimeError("x"), TypeError("x")))


# ----------------------------------------------------------------------------- packaging
def test_wheel_ships_the_configs_and_finds_them_without_the_source_tree(tmp_path):
    """Build a wheel from a copy of the project, unpack it as an installed package would be, and run
    `sert --cfg job` from elsewhere: the configs come from inside the package."""
    import os
    import shutil
    import subprocess
    import sys
    import zipfile

    from conftest import ROOT

    src = tmp_path / "project"
    for name in ("src", "conf"):
        shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    for name in ("pyproject.toml", "setup.py", "MANIFEST.in", "README.md"):
        shutil.copy(ROOT / name, src / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", ".", "-w",
                    str(tmp_path / "dist")], cwd=src, check=True, capture_output=True, timeout=300)
    (wheel,) = (tmp_path / "dist").glob("sert-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = {f"sert/conf/{p.relative_to(ROOT / 'conf')}" for p in (ROOT / "conf").rglob("*.yaml")}
    assert expected and expected <= names, sorted(expected - names)

    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)  # what `pip install` puts in site-packages
    shutil.rmtree(src)  # no source tree left
    env = {**os.environ, "PYTHONPATH": str(site), "WANDB_MODE": "disabled"}
    env.pop("SERT_CONFIG_DIR", None)
    script = ("import sert.cli as c; from hydra import compose, initialize_config_dir\n"
              "with initialize_config_dir(config_dir=c.CONF_DIR, version_base='1.3'):\n"
              "    cfg = compose('config', overrides=['model=tiny', 'stage=filter'])\n"
              "print(c.__file__, c.CONF_DIR, cfg.model.name, cfg.filter.length.min_tokens)")
    proc = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == [str(site / "sert" / "cli.py"), str(site / "sert" / "conf"), "tiny", "25"]


# ----------------------------------------------------------------------------- clear messages
@pytest.mark.parametrize("ref", ["/no/such/model", "./models/nope", "~/nope-model", "outputs/cache/distill/abc/model"])
def test_missing_local_model_path_is_reported_as_a_path(ref):
    from sert.models import load_model, load_tokenizer

    with pytest.raises(FileNotFoundError, match=rf"model '{ref}': no such local file or directory"):
        load_model(ref, device="cpu")
    with pytest.raises(FileNotFoundError, match=rf"tokenizer '{ref}': no such local file or directory"):
        load_tokenizer(ref)


def test_missing_gguf_file_in_existing_dir(tmp_path):
    from sert.models import load_model

    with pytest.raises(FileNotFoundError, match="no GGUF file 'm.gguf' in that directory"):
        load_model(str(tmp_path), gguf_file="m.gguf", device="cpu")


def test_tiny_model_key_ignores_name_or_path(tmp_path):
    """load_model ignores name_or_path when random_init is set, so cache keys must too."""
    from conftest import compose

    from sert.pipeline import Context

    def ident(*o):
        return Context(compose(*o, f"paths.cache_dir={tmp_path}"), tmp_path / "run").model_identity()

    assert ident("model=tiny") == ident("model=tiny", "model.name_or_path=something/else")
    assert ident("model=tiny") != ident("model=tiny-deep")
    assert ident("model=gpt2") != ident("model=gpt2", "model.name_or_path=gpt2-medium")


def test_token_hyperparameters_are_recorded_and_a_run_reruns_from_its_overrides(tmp_path, sqa_jsonl):
    """Knobs with 'token' in their name are numbers in run.json, and its overrides rerun the same job."""
    out = tmp_path / "out"
    args = ["stage=data", "model=tiny", "logger=none", f"dataset.path={sqa_jsonl}", "generation.max_new_tokens=7",
            "generation.samples_per_token=2", "filter.length.min_tokens=3", "teacher.max_tokens=9",
            "judge=local", "judge.score_tokens=6"]
    run_cli(*args, out=out)
    m = _manifest(out)
    assert m["overrides"] == args and all("***" not in a for a in m["command"])
    cfg = m["config"]
    assert (cfg["generation"]["max_new_tokens"], cfg["generation"]["samples_per_token"]) == (7, 2)
    assert (cfg["filter"]["length"]["min_tokens"], cfg["teacher"]["max_tokens"]) == (3, 9)
    assert cfg["judge"]["score_tokens"] == 6
    rerun = tmp_path / "rerun"
    run_cli(*m["overrides"], out=rerun)
    assert _manifest(rerun)["config"] == cfg | {"paths": _manifest(rerun)["config"]["paths"]}
