"""What the benchmark scripts share: the machine record, the model under test and the matmul peaks they judge
speed against, measured in the same process as the benchmark.

* ``large_peak(dtype)``: torch.mm at 4096^3, what the matrix units do at their best;
* ``shape_peak(config, rows, dtype, train=...)``: torch.mm at the model's own shapes for ``rows`` token rows
  (every linear layer of a decoder block and the LM head; with ``train`` also the two backward GEMMs of each),
  weighted by how often each shape occurs: the total FLOPs over the total time, i.e. the rate a step would reach
  if every matmul ran as fast as it does alone. A step cannot beat it by more than its non-matmul share allows.
"""

from __future__ import annotations

import functools
import os
import platform
import time

import torch


def machine() -> dict:
    from sert.hardware import cpu_info

    info = cpu_info()
    return {"cpu": info["model"], "flags": info["flags"], "torch_capability": info["torch_capability"],
            "threads": torch.get_num_threads(), "torch": torch.__version__, "python": platform.python_version(),
            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
            "load_average": " ".join(f"{x:.2f}" for x in os.getloadavg())}


def load_bench_model(name: str, dtype: str = "float32"):
    """A model for benchmarks: ``tiny`` (random 2-layer GPT-2), ``tiny-llama`` (random 2-layer Llama with GQA),
    a ``conf/model`` name (``smollm2-135m``) or a local directory."""
    from sert.models import load_model, model_spec

    if name == "tiny":
        return load_model("tiny", random_init={"n_layer": 2, "n_embd": 64, "n_head": 2, "n_positions": 512},
                          dtype=dtype, device="cpu")[0]
    if name == "tiny-llama":
        from transformers import LlamaConfig, LlamaForCausalLM

        torch.manual_seed(0)
        cfg = LlamaConfig(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                          tie_word_embeddings=True)
        return LlamaForCausalLM(cfg).to(getattr(torch, {"float32": "float32", "bfloat16": "bfloat16"}[dtype]))
    return load_model(**{**model_spec(name), "dtype": dtype, "device": "cpu"})[0]


def mm_rate(m: int, k: int, n: int, dtype: torch.dtype, seconds: float = 0.3) -> float:
    """GFLOP/s of torch.mm (m x k) @ (k x n) over ``seconds`` (after one warm-up call)."""
    a, b = torch.randn(m, k, dtype=dtype), torch.randn(k, n, dtype=dtype)
    torch.mm(a, b)
    reps, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds or reps < 2:
        torch.mm(a, b)
        reps += 1
    return 2 * m * k * n * reps / (time.perf_counter() - t0) / 1e9


def large_peak(dtype: torch.dtype) -> float:
    return round(mm_rate(4096, 4096, 4096, dtype, seconds=1.5), 1)


def model_shapes(config) -> list[tuple[int, int, int]]:
    """(in, out, count) of every linear layer of one forward pass: the decoder blocks and the LM head."""
    h = getattr(config, "hidden_size", None) or config.n_embd
    layers = getattr(config, "num_hidden_layers", None) or config.n_layer
    if getattr(config, "model_type", "") == "gpt2":
        inner = config.n_inner or 4 * h
        block = [(h, 3 * h, 1), (h, h, 1), (h, inner, 1), (inner, h, 1)]
    else:
        heads = config.num_attention_heads
        head_dim = getattr(config, "head_dim", None) or h // heads
        kv = getattr(config, "num_key_value_heads", heads) * head_dim
        inter = config.intermediate_size
        block = [(h, heads * head_dim, 1), (h, kv, 2), (heads * head_dim, h, 1), (h, inter, 2), (inter, h, 1)]
    return [(i, o, c * layers) for i, o, c in block] + [(h, config.vocab_size, 1)]


@functools.lru_cache(maxsize=None)
def _shape_peak(key, rows: int, dtype: torch.dtype, train: bool) -> float:
    shapes = dict(key)["shapes"]
    flops = seconds = 0.0
    for k, n, count in shapes:
        gemms = [(rows, k, n)] + ([(rows, n, k), (n, rows, k)] if train else [])  # forward; grad input, grad weight
        for m, kk, nn in gemms:
            rate = mm_rate(m, kk, nn, dtype)
            f = 2 * m * kk * nn * count
            flops, seconds = flops + f, seconds + f / (rate * 1e9)
    return round(flops / seconds / 1e9, 1)


def shape_peak(config, rows: int, dtype: torch.dtype, train: bool = False) -> float:
    return _shape_peak((("shapes", tuple(model_shapes(config))),), rows, dtype, train)
