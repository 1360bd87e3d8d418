"""Secrets are recognised by whole key names and value shapes, never by substring; hyperparameters stay visible."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import run_cli

from sert.redaction import REDACTED, is_secret_arg, is_secret_key, redact, redact_argv

SECRET_KEYS = ["api_key", "apikey", "apiKey", "openai_api_key", "OPENAI_API_KEY", "WANDB_API_KEY", "x-api-key",
               "secret", "client_secret", "secret_key", "aws_secret_access_key", "password", "db_password",
               "Authorization", "token", "hf_token", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "access_token",
               "teacher.api_key", "hydra.job.env_set.OPENAI_API_KEY"]
# every token-count knob of the shipped configs, plus look-alikes that hold no secret
NOT_SECRET = ["max_new_tokens", "samples_per_token", "min_tokens", "max_tokens", "answer_max_tokens", "score_tokens",
              "label_only_max_new_tokens", "first_token_rank", "pad_token", "eos_token", "tokenizer", "tokens",
              "api_key_env", "OPENAI_API_KEY_ENV", "key", "cache_key", "keys", "generation.max_new_tokens",
              "filter.length.min_tokens", "judge.score_tokens", "teacher.max_tokens", "evaluate.max_new_tokens"]


@pytest.mark.parametrize("key", SECRET_KEYS)
def test_secret_keys(key):
    assert is_secret_key(key)


@pytest.mark.parametrize("key", NOT_SECRET)
def test_hyperparameters_are_not_secrets(key):
    assert not is_secret_key(key)


def test_redact_tree_keeps_numbers_and_hides_secrets():
    cfg = {"generation": {"max_new_tokens": 256, "samples_per_token": 5, "first_k": 5},
           "filter": {"length": {"min_tokens": 25}},
           "teacher": {"max_tokens": 512, "answer_max_tokens": 16, "api_key_env": "OPENAI_API_KEY", "api_key": "abc"},
           "judge": {"score_tokens": ["1", "2"], "max_tokens": 8, "base_url": "https://user:pw@host/v1"},
           "headers": [{"Authorization": "x"}, "Bearer abcdef0123456789xyz", "sk-" + "a" * 20, "plain", None],
           "hf_token": None}
    assert redact(cfg) == {
        "generation": {"max_new_tokens": 256, "samples_per_token": 5, "first_k": 5},
        "filter": {"length": {"min_tokens": 25}},
        "teacher": {"max_tokens": 512, "answer_max_tokens": 16, "api_key_env": "OPENAI_API_KEY", "api_key": REDACTED},
        "judge": {"score_tokens": ["1", "2"], "max_tokens": 8, "base_url": REDACTED},
        "headers": [{"Authorization": REDACTED}, REDACTED, REDACTED, "plain", None],
        "hf_token": None,  # an unset secret is shown as unset
    }


def test_redact_argv():
    argv = ["sert", "generation.max_new_tokens=64", "generation.samples_per_token=2", "+teacher.api_key=abc",
            "++judge.hf_token@x=tok", "teacher.api_key_env=MY_KEY", "teacher.base_url=http://u:p@h/v1",
            "filter.length.min_tokens=3", "-m", "model=tiny,gpt2", "sk-" + "b" * 30]
    assert redact_argv(argv) == ["sert", "generation.max_new_tokens=64", "generation.samples_per_token=2",
                                 "+teacher.api_key=***", "++judge.hf_token@x=***", "teacher.api_key_env=MY_KEY",
                                 "teacher.base_url=***", "filter.length.min_tokens=3", "-m", "model=tiny,gpt2", "***"]


def test_secret_values_by_shape():
    assert is_secret_arg("teacher.base_url=https://me:hunter2@api.example.com/v1")
    assert not is_secret_arg("teacher.base_url=http://127.0.0.1:8080/v1")
    assert not is_secret_arg("dataset.path=/data/task-abcdefghijklmnopqrstu.json")  # 'sk-' inside a word
    assert is_secret_arg("+judge.headers=Bearer eyJhbGciOiJIUzI1NiJ9.e30")
    assert is_secret_arg("+x.y=sk-proj-" + "Ab3" * 10) and is_secret_arg("+x.y=hf_" + "aB1" * 10)
    assert not is_secret_arg("dataset.path=/data/sk-learn-experiments-2024.json")  # no long random run
    assert not is_secret_arg("prompts.generate=the bearer of {question}") and not is_secret_arg("paths.x=hf_cache")


# ----------------------------------------------------------------------------- through the CLI
SECRET = "sk-test-NEVER-ON-DISK-0123456789abcdef"
OFFLINE = {"WANDB_MODE": "offline", "WANDB_SILENT": "true", "HYDRA_FULL_ERROR": "0"}


def files_with(root: Path, needle: str) -> list[Path]:
    """Every file or directory under ``root`` whose name or bytes contain ``needle``."""
    if not root.exists():
        return []
    return [p for p in root.rglob("*") if needle in str(p) or (p.is_file() and needle.encode() in p.read_bytes())]


@pytest.mark.parametrize("secret_arg", [f"+teacher.api_key={SECRET}", f"+judge.hf_token={SECRET}",
                                        f"teacher.base_url=https://me:{SECRET}@api.example.com/v1",
                                        f"hydra.job.env_set.OPENAI_API_KEY={SECRET}"])
def test_secret_override_is_refused_before_anything_is_written(tmp_path, sqa_jsonl, secret_arg):
    out = tmp_path / "out"
    proc = run_cli("stage=data", "model=tiny", "logger=wandb", f"dataset.path={sqa_jsonl}", secret_arg,
                   out=out, check=False, env=OFFLINE)
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("sert: refusing the override ") and "api_key_env" in lines[0]
    assert SECRET not in proc.stdout + proc.stderr
    assert files_with(out, SECRET) == [] and not (out / "runs").exists()


def test_secret_in_a_sweep_is_refused(tmp_path, sqa_jsonl):
    out = tmp_path / "out"
    proc = run_cli("-m", "stage=data", "model=tiny,gpt2", "logger=wandb", f"dataset.path={sqa_jsonl}",
                   f"+teacher.api_key={SECRET},other", out=out, check=False, env=OFFLINE)
    assert proc.returncode == 1 and "refusing the override +teacher.api_key=***" in proc.stderr
    assert SECRET not in proc.stdout + proc.stderr
    assert files_with(out, SECRET) == [] and not (out / "multiruns").exists()


def test_secret_from_the_environment_reaches_no_file_of_a_failing_sweep(tmp_path, sqa_jsonl):
    """The allowed way: a secret-named key given as ``${oc.env:VAR}``. Hydra stores the reference, run.json
    and W&B the redacted value; the jobs fail (missing split file) and still no file holds the secret."""
    out = tmp_path / "out"
    proc = run_cli("-m", "stage=data", "model=tiny,gpt2", "logger=wandb", f"dataset.path={sqa_jsonl}",
                   f"dataset.split_file={tmp_path}/missing.json", "+dataset.hub_splits.api_key=${oc.env:SERT_TEST_SECRET}",
                   out=out, check=False, env={**OFFLINE, "SERT_TEST_SECRET": SECRET})
    assert proc.returncode == 1 and "2 sweep job(s) failed" in proc.stderr
    runs = sorted(p.parent for p in (out / "multiruns").rglob("run.json"))
    assert len(runs) == 2 and all(json.loads((r / "run.json").read_text())["status"] == "failed" for r in runs)
    assert all(json.loads((r / "run.json").read_text())["config"]["dataset"]["hub_splits"]["api_key"] == "***"
               for r in runs)
    assert list((out / "multiruns").rglob("*.wandb")) and list((out / "multiruns").rglob("multirun.yaml"))
    assert SECRET not in proc.stdout + proc.stderr
    assert files_with(out, SECRET) == []
