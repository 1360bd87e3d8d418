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


def test_engine_greedy_equals_hf_generate_with_rows_finishing_early():
    model, tok = load_model("tiny", random_init=TINY, device="cpu")
    prompts = ["Question: a? Answer:", "Question: a much longer question here? Answer:", "Q: b", "x" * 30,
               "hello there", "zz"]
    tok.eos_token = "8"  # a byte this random model emits after some prompts: rows finish at different steps
    stats = DecodeStats()
    outs = decode(model, tok, prompts, max_new_tokens=18, batch_size=6, stats=stats)
    assert [o.finish_reason for o in outs].count("eos") == 2 and stats.clamped == 0
    tok.padding_side = "left"
    enc = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    gen = model.generate(**enc, max_new_tokens=18, do_sample=False, pad_token_id=tok.pad_token_id,
                         eos_token_id=tok.eos_token_id)
    for r, o in enumerate(outs):
        row = gen[r, enc.input_ids.shape[1]:].tolist()
        n = row.index(tok.eos_token_id) if tok.eos_token_id in row else len(row)
        assert (o.num_tokens, o.text) == (n, tok.decode(row[:n], skip_special_tokens=True))
        assert o.finish_reason == ("eos" if n < len(row) else "length")
    # a stop string ends its row early; the text is cut before it
    stopped = decode(model, tok, ["zz"], max_new_tokens=18, stop=["{{"])[0]
    assert stopped.finish_reason == "stop" and stopped.text == "zzzzzzzzzz" and stopped.num_tokens < 18


def test_each_row_keeps_its_own_context_budget():
    model, tok = load_model("tiny", random_init=TINY, device="cpu")
    long, short = "y" * 50, "z"  # 50 + 14 = 64 positions; the short prompt keeps its full budget in the batch
    stats = DecodeStats()
    outs = decode(model, tok, [long, short], max_new_tokens=30, batch_size=2, stats=stats)
    assert (outs[0].num_tokens, outs[0].budget, outs[1].num_tokens, outs[1].budget) == (14, 14, 30, 30)
    assert stats.clamped == 1 and stats.as_dict()["min_new_tokens_allowed"] == 14
    assert outs[1].text == decode(model, tok, [short], max_new_tokens=30)[0].text


def test_sampling_is_seeded():
    model, tok = load_model("tiny", random_init=TINY, device="cpu")
    kw = {"max_new_tokens": 10, "temperature": 1.0, "top_k": 10, "top_p": 0.95}
    a = decode(model, tok, ["abc", "de"], seed=1, **kw)
    assert [o.text for o in a] == [o.text for o in decode(model, tok, ["abc", "de"], seed=1, **kw)]
    assert [o.text for o in a] != [o.text for o in decode(model, tok, ["abc", "de"], seed=2, **kw)]
