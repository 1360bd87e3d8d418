"""Run-time dtype detection, fault injection for kill tests, and the shared decoding engine."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from sert import hardware
from sert.engine import DecodeStats, context_length, decode, stop_cut
from sert.models import load_model

TINY = {"n_layer": 1, "n_embd": 16, "n_head": 2, "n_positions": 64, "seed": 0}


def test_auto_dtype_follows_the_cpu_flags(monkeypatch):
    monkeypatch.setattr(hardware, "cpu_info", lambda: {"model": "x", "flags": ["avx2", "avx512_bf16"]})
    assert hardware.resolve_dtype("auto", "cpu") == "bfloat16"
    monkeypatch.setattr(hardware, "cpu_info", lambda: {"model": "x", "flags": ["avx2"]})
    assert hardware.resolve_dtype("auto", "cpu") == "float32"
    assert hardware.resolve_dtype("bf16", "cpu") == "bfloat16"  # explicit choice wins (with a warning)
    with pytest.raises(ValueError, match="float16 is not supported on CPU"):
        hardware.resolve_dtype("float16", "cpu")
    with pytest.raises(ValueError, match="unknown dtype"):
        hardware.resolve_dtype("int3", "cpu")


def test_kill_point_sigkills_only_at_the_nth_hit():
    code = "from sert import faults\nfor i in range(5):\n    print(i, flush=True)\n    faults.reached('p')\n"
    proc = subprocess.run([sys.executable, "-c", code], env={"SERT_KILL_AT": "p:3", "PYTHONPATH": "src"},
                          capture_output=True, text=True)
    assert proc.returncode == -9 and proc.stdout.split() == ["0", "1", "2"]
    proc = subprocess.run([sys.executable, "-c", code], env={"SERT_KILL_AT": "other:1", "PYTHONPATH": "src"},
                          capture_output=True, text=True)
    assert proc.returncode == 0


def test_decode_keeps_order_and_clamps_to_the_context():
    model, tok = load_model("tiny", random_init=TINY, device="cpu")
    assert context_length(model) == 64
    prompts = ["short", "a much longer prompt " * 2, "x" * 70]  # the last alone overflows 64 positions
    stats = DecodeStats()
    outs = decode(model, tok, prompts, max_new_tokens=40, batch_size=2, stats=stats)
    assert stats.truncated_prompts == 1 and stats.clamped >= 1
    assert all(o.prompt_tokens + o.num_tokens <= 64 for o in outs)
    # greedy decoding of one prompt alone gives the same text as in a batch
    alone = decode(model, tok, prompts[:1], max_new_tokens=40, batch_size=1)[0]
    assert alone.text == outs[0].text
    skipped = decode(model, tok, prompts, max_new_tokens=5, skip={0, 2})
    assert skipped[0] is None and skipped[2] is None and skipped[1] is not None


def test_stop_cut():
    assert stop_cut("abc Question: x", ["Question:"]) == 4
    assert stop_cut("abc", ["Question:"]) is None


def test_model_spec_accepts_config_names_paths_and_hub_ids(tmp_path):
    from sert.models import model_spec

    assert model_spec("tiny")["random_init"]["n_layer"] == 2  # conf/model/tiny.yaml
    (tmp_path / "m").mkdir()
    assert model_spec(str(tmp_path / "m")) == {"name_or_path": str(tmp_path / "m")}
    (tmp_path / "q.gguf").write_bytes(b"")
    assert model_spec(str(tmp_path / "q.gguf")) == {"name_or_path": str(tmp_path), "gguf_file": "q.gguf"}
    assert model_spec("Qwen/Qwen2.5-1.5B-Instruct") == {"name_or_path": "Qwen/Qwen2.5-1.5B-Instruct"}
    with pytest.raises(FileNotFoundError, match="no such local file"):
        model_spec("./missing-model")
