"""Secrets are recognised by whole key names and value shapes, never by substring; hyperparameters stay visible."""

from __future__ import annotations

import pytest

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
           "headers": [{"Authorization": "x"}, "Bearer abcdef", "sk-" + "a" * 20, "plain", None],
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
    assert is_secret_arg("+judge.headers=Bearer eyJhbGciOi")
