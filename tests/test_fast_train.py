"""The training step's fast paths equal the plain ones: the fused, chunked, target-only LM head + loss
(``sert.training.fast``) against ``model(**batch).loss`` and its gradients, the fused optimizer against the
unfused one, and both trainers with the fast paths on and off."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from sert.models import load_model
from sert.training.data import Example, PadCollator, tokenize_example
from sert.training.fast import LinearCrossEntropy, causal_lm_loss, fast_loss_supported
from sert.training.loop import LoopTrainer
from sert.training.sft import HFTrainer

EXAMPLES = [Example(f"Question: what is {i} plus one? Answer:", f" {i} and one" + " more" * (i % 3)
                    + f". So the answer is {i + 1}.") for i in range(8)]


def gpt2():
    return load_model("tiny", random_init={"n_layer": 2, "n_embd": 32, "n_head": 2, "n_positions": 256, "seed": 0},
                      device="cpu")


def llama():
    """A tiny Llama with grouped-query attention and tied embeddings (SmolLM2's layout)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    _, tok = gpt2()
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                      tie_word_embeddings=True, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
    return LlamaForCausalLM(cfg), tok


def batch(tok, examples=EXAMPLES) -> dict:
    rows = [tokenize_example(tok, e.prompt, e.completion, max_length=256)[0] for e in examples]
    return PadCollator(tok.pad_token_id)(rows)  # right-padded, prompt labels -100


def grads(model, loss) -> dict[str, torch.Tensor]:
    model.zero_grad(set_to_none=True)
    loss.backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_linear_cross_entropy_matches_hand_computed_example():
    # two rows, vocab 3, hidden 2: logits = h @ W.T
    h = torch.tensor([[1.0, 0.0], [0.0, 2.0]], requires_grad=True)
    w = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]], requires_grad=True)
    t = torch.tensor([0, 2])
    loss = LinearCrossEntropy.apply(h, w, t, torch.float32, 1)
    # row 0: logits (1, 0, 1) -> -log(e / (2e + 1)); row 1: logits (0, 2, 2) -> -log(e^2 / (1 + 2e^2))
    e = torch.e
    expected = (-torch.log(torch.tensor(e / (2 * e + 1))) - torch.log(torch.tensor(e**2 / (1 + 2 * e**2)))) / 2
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    loss.backward()
    h2, w2 = h.detach().clone().requires_grad_(), w.detach().clone().requires_grad_()
    F.cross_entropy(h2 @ w2.T, t).backward()
    torch.testing.assert_close(h.grad, h2.grad)
    torch.testing.assert_close(w.grad, w2.grad)


@pytest.mark.parametrize("chunk", [1, 5, 1024])
def test_linear_cross_entropy_equals_plain_for_any_chunking(chunk):
    g = torch.Generator().manual_seed(0)
    h = torch.randn(37, 16, generator=g, requires_grad=True)
    w = torch.randn(50, 16, generator=g, requires_grad=True)
    t = torch.randint(0, 50, (37,), generator=g)
    loss = LinearCrossEntropy.apply(h, w, t, torch.float32, chunk)
    (loss * 3).backward()  # an upstream gradient other than 1 scales both gradients
    h2, w2 = h.detach().clone().requires_grad_(), w.detach().clone().requires_grad_()
    ref = F.cross_entropy(h2 @ w2.T, t)
    (ref * 3).backward()
    torch.testing.assert_close(loss, ref)
    torch.testing.assert_close(h.grad, h2.grad)
    torch.testing.assert_close(w.grad, w2.grad)


@pytest.mark.parametrize("make", [gpt2, llama], ids=["gpt2", "llama-gqa-tied"])
def test_fast_loss_equals_model_loss_and_gradients_fp32(make):
    model, tok = make()
    model.eval()  # no dropout (gradients flow in eval mode too)
    b = batch(tok)
    assert (b["attention_mask"] == 0).any() and (b["labels"] == -100).any()  # padding and prompt masking present
    assert fast_loss_supported(model)
    plain = model(**b).loss
    g_plain = grads(model, plain)
    fast = causal_lm_loss(model, b, fast=True, chunk_rows=7)
    g_fast = grads(model, fast)
    torch.testing.assert_close(fast, plain, rtol=1e-5, atol=1e-6)
    assert g_fast.keys() == g_plain.keys()
    for name in g_plain:
        torch.testing.assert_close(g_fast[name], g_plain[name], rtol=1e-4, atol=1e-6, msg=name)


def test_fast_loss_under_bf16_autocast_follows_the_plain_path():
    model, tok = llama()
    b = batch(tok)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        plain = model(**b).loss
        fast = causal_lm_loss(model, b, fast=True)
    assert fast.dtype == torch.float32
    assert fast.item() == pytest.approx(plain.item(), rel=1e-2)


def test_unchecked_architecture_takes_the_plain_path():
    model, tok = gpt2()
    model.config.model_type = "some_new_arch"
    assert not fast_loss_supported(model)
    b = batch(tok)
    torch.testing.assert_close(causal_lm_loss(model, b, fast=True), model(**b).loss)


@pytest.mark.parametrize("cls", [LoopTrainer, HFTrainer])
def test_trainers_fast_paths_on_and_off_give_the_same_run(cls, tmp_path, one_torch_thread):
    """6 steps of training with the fused loss + fused AdamW against the plain loss + unfused AdamW."""
    losses = {}
    for fast in (True, False):
        model, tok = gpt2()
        trainer = cls(max_steps=6, batch_size=4, lr=3e-3, save_strategy="no", precision="fp32", fast_loss=fast,
                      fused_optimizer=fast, logging_steps=1)
        summary = trainer.train(model, tok, EXAMPLES, tmp_path / str(fast), seed=0)
        losses[fast] = summary["train_loss"]
    assert losses[True] == pytest.approx(losses[False], rel=1e-4)


def test_loss_chunk_rows_must_be_positive():
    with pytest.raises(ValueError, match="loss_chunk_rows"):
        LoopTrainer(loss_chunk_rows=0)


@pytest.mark.slow  # the compile alone takes ~30 s of CPU
def test_compiled_blocks_train_like_eager_blocks(tmp_path, one_torch_thread):
    """trainer.compile: the same 3 steps (Llama blocks: no dropout, whose compiled RNG would differ) within 1e-4."""
    losses = {}
    for compiled in (True, False):
        model, tok = llama()
        trainer = LoopTrainer(max_steps=3, batch_size=4, lr=3e-3, save_strategy="no", precision="fp32",
                              compile=compiled, logging_steps=1)
        losses[compiled] = trainer.train(model, tok, EXAMPLES, tmp_path / str(compiled), seed=0)["train_loss"]
    assert losses[True] == pytest.approx(losses[False], rel=1e-4)


def test_fast_loss_without_grad_mode_computes_the_same_loss_and_no_gradients():
    model, tok = llama()
    b = batch(tok)
    with torch.no_grad():
        loss = causal_lm_loss(model, b, fast=True)
    assert not loss.requires_grad
    torch.testing.assert_close(loss, causal_lm_loss(model, b, fast=False).detach(), rtol=1e-5, atol=1e-6)
