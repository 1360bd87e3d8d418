from __future__ import annotations

import torch

from sert.models import byte_tokenizer, load_model, save_model

TINY = {"n_layer": 1, "n_embd": 16, "n_head": 2, "n_positions": 64, "seed": 0}


def test_byte_tokenizer_roundtrip():
    tok = byte_tokenizer()
    ids = tok("Question: é? Answer:")["input_ids"]
    assert tok.decode(ids) == "Question: é? Answer:" and len(tok) == 257


def test_tiny_model_is_seeded_and_padded(tmp_path):
    m1, tok = load_model("tiny", random_init=TINY, device="cpu")
    m2, _ = load_model("tiny", random_init=TINY, device="cpu")
    assert tok.pad_token == tok.eos_token and tok.padding_side == "left"
    assert all(torch.equal(a, b) for a, b in zip(m1.parameters(), m2.parameters()))
    save_model(m1, tok, tmp_path / "ckpt")
    m3, tok3 = load_model(str(tmp_path / "ckpt"), device="cpu")
    assert all(torch.equal(a, b) for a, b in zip(m1.parameters(), m3.parameters()))
    assert tok3.pad_token_id == tok.pad_token_id
