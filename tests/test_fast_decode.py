"""The decoding fast paths equal the plain ones: ``sert.attention`` (one-token steps as grouped fp32 matmuls)
against transformers' SDPA, and the engine and the path sampler with it against the same model on SDPA."""

from __future__ import annotations

import pytest
import torch

from sert.attention import decode_attention
from sert.engine import decode
from sert.models import load_model, set_attention
from sert.sampling import SamplingSpec, sample_batch

TINY = {"n_layer": 2, "n_embd": 32, "n_head": 2, "n_positions": 128, "seed": 0}
PROMPTS = ["Question: a? Answer:", "Question: a much longer question here? Answer:", "Q: b", "x" * 30, "zz"]


class GQAModule(torch.nn.Module):
    num_key_value_groups = 3
    is_causal = True


def llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    _, tok = load_model("tiny", random_init=TINY, device="cpu")
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=48, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=6, num_key_value_heads=2, max_position_embeddings=128,
                      tie_word_embeddings=True, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
    return LlamaForCausalLM(cfg).eval(), tok


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 1e-2)])
@pytest.mark.parametrize("masked", [False, True])
def test_decode_attention_equals_sdpa(dtype, tol, masked):
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    g = torch.Generator().manual_seed(0)
    b, heads, kv, length, dim = 4, 6, 2, 9, 8
    q = torch.randn(b, heads, 1, dim, generator=g).to(dtype)
    k, v = (torch.randn(b, kv, length, dim, generator=g).to(dtype) for _ in range(2))
    mask = None
    if masked:  # left padding: row r ignores its first r positions
        mask = torch.ones(b, 1, 1, length, dtype=torch.bool)
        for r in range(b):
            mask[r, ..., :r] = False
    module = GQAModule()
    module.num_key_value_groups = heads // kv
    ours, _ = decode_attention(module, q, k, v, mask, scaling=dim ** -0.5)
    ref, _ = sdpa_attention_forward(module, q, k, v, mask, scaling=dim ** -0.5)
    assert ours.shape == ref.shape == (b, 1, heads, dim) and ours.dtype == dtype
    torch.testing.assert_close(ours.float(), ref.float(), rtol=tol, atol=tol)


def test_longer_queries_go_to_sdpa_unchanged():
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(2, 4, 5, 8, generator=g) for _ in range(3))
    module = GQAModule()
    module.num_key_value_groups = 1
    torch.testing.assert_close(decode_attention(module, q, k, v, None)[0], sdpa_attention_forward(module, q, k, v, None)[0],
                               rtol=0, atol=0)


@pytest.mark.parametrize("make", ["gpt2", "llama"])
def test_engine_greedy_outputs_are_the_same_with_either_attention(make):
    model, tok = load_model("tiny", random_init=TINY, device="cpu") if make == "gpt2" else llama()
    set_attention(model, "sert")
    assert model.config._attn_implementation == "sert"
    fast = decode(model, tok, PROMPTS, max_new_tokens=20, batch_size=5)
    set_attention(model, "sdpa")
    plain = decode(model, tok, PROMPTS, max_new_tokens=20, batch_size=5)
    assert [(o.text, o.num_tokens, o.finish_reason) for o in fast] == \
        [(o.text, o.num_tokens, o.finish_reason) for o in plain]


def test_sampled_paths_and_their_ppl_are_the_same_with_either_attention():
    model, tok = llama()
    spec = SamplingSpec(first_k=3, samples_per_token=2, max_new_tokens=12, stop=())
    runs = {}
    for attention in ("sert", "sdpa"):
        set_attention(model, attention)
        runs[attention] = sample_batch(model, tok, PROMPTS[:3], ["a", "b", "c"], spec, seed=0)
    for qa, qb in zip(runs["sert"], runs["sdpa"]):
        for pa, pb in zip(qa, qb):
            assert pa["token_ids"] == pb["token_ids"]
            assert pa["ppl"] == pytest.approx(pb["ppl"], rel=1e-5)


def test_unknown_attention_is_refused():
    model, _ = load_model("tiny", random_init=TINY, device="cpu")
    with pytest.raises(ValueError, match="model.attention must be sert, sdpa or eager"):
        set_attention(model, "flash")
