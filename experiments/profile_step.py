"""Where the time of one training step and one decoding step goes, by category, on this CPU.

    python experiments/profile_step.py                                   # SmolLM2-135M, both steps, plain and sert
    python experiments/profile_step.py --model tiny --rows 4 --length 32   # smoke
    python experiments/profile_step.py --what train --json outputs/profile.json

Training step (batch ``--rows`` x ``--length`` tokens, loss on the last 70% of each row as in SFT with a masked
prompt, one optimizer step):

* ``plain``: what a user writes first: ``model(**batch).loss`` under bf16 autocast (fp32 where bf16 is not fast),
  ``torch.optim.AdamW`` (foreach);
* ``sert``: sert's training step (``sert.training.fast``): the LM head and cross-entropy on target tokens only,
  in chunks, fused into one autograd function, and torch's fused AdamW.

Decoding step (``--decode-rows`` rows, KV cache of ``--context`` positions, one new token): SDPA attention, HF
``DynamicCache`` and transformers' top-k/top-p warpers (``plain``) against sert's sampler step (``sert.attention``,
preallocated cache, top-k-first sampling; ``sert``).

torch.profiler gives each op's self time; ops are summed into categories (matmul, attention, optimizer, casts and
copies, LM head + loss, sampling, norms/activations/other) and "Python, dispatch and profiler" is the profiled
wall time the ops do not account for. ``ONEDNN_VERBOSE=1`` in the environment makes oneDNN print the kernel of
every matmul (``brg:avx512_core_amx`` = AMX tiles, ``avx512_core_bf16`` = AVX512-BF16, ``ref``/``gemm:jit`` =
fallbacks); ``--onednn`` runs one step that way and counts the kernels.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see bench_generate.py: spinning threads on a shared CPU

import torch  # noqa: E402
from torch.profiler import ProfilerActivity, profile  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "experiments"))

from benchlib import load_bench_model, machine, shape_peak  # noqa: E402

CATEGORIES = [  # (category, regex on the op name), first match wins
    ("optimizer", r"adam|_foreach_|Optimizer\.step|optimizer"),
    ("attention", r"scaled_dot_product|flash_attention|_efficient_attention|softmax_backward_data.*attn"),
    ("LM head + loss", r"sert_lm_loss|cross_entropy|nll_loss|log_softmax|logsumexp"),
    ("matmul", r"aten::(mm|addmm|bmm|matmul|linear|baddbmm|_mkldnn|mkldnn_)"),
    ("sampling", r"topk|multinomial|searchsorted|cumsum|aten::sort|aten::softmax|rand|gather|masked_fill"),
    ("casts and copies", r"aten::(to|_to_copy|copy_|clone|contiguous|cat|index_select|index|repeat|expand_as)$"),
]
OTHER = "norms, activations, other ops"
UNATTRIBUTED = "Python, dispatch and profiler"


def category(name: str) -> str:
    for cat, pattern in CATEGORIES:
        if re.search(pattern, name):
            return cat
    return OTHER


def profile_fn(fn, warmup: int, reps: int) -> dict:
    """Median wall and CPU time of ``fn`` (unprofiled) and one profiled call's time by category. The CPU time
    (this process, all threads) is the steadier figure on a shared machine; on an idle one wall x threads ~ CPU."""
    for _ in range(warmup):
        fn()
    walls, cpus = [], []
    for _ in range(reps):
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        walls.append(time.perf_counter() - t0)
        cpus.append(time.process_time() - c0)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        t0 = time.perf_counter()
        fn()
        profiled = time.perf_counter() - t0
    by_cat: dict[str, float] = collections.defaultdict(float)
    for ev in prof.key_averages():
        if ev.key.startswith("ProfilerStep") or ev.key in ("sert_train_step", "sert_decode_step"):
            continue
        by_cat[category(ev.key)] += ev.self_cpu_time_total / 1e6
    by_cat[UNATTRIBUTED] = max(0.0, profiled - sum(by_cat.values()))
    return {"wall_s": sorted(walls)[len(walls) // 2], "cpu_s": sorted(cpus)[len(cpus) // 2], "profiled_s": profiled,
            "categories": {k: round(v, 4) for k, v in sorted(by_cat.items(), key=lambda kv: -kv[1])}}


# ----------------------------------------------------------------------------- training
def train_batch(vocab: int, rows: int, length: int, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(10, vocab, (rows, length), generator=g)
    labels = ids.clone()
    labels[:, : int(0.3 * length)] = -100  # the prompt: no loss there
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}


def train_step_fn(model, batch: dict, mode: str, precision: str):
    """One optimizer step as ``trainer=loop`` takes it: loss, backward, clipping at 1.0, AdamW."""
    from sert.training.fast import causal_lm_loss, make_optimizer

    fast = mode == "sert"
    opt = make_optimizer(model, lr=1e-5, betas=(0.9, 0.999), weight_decay=0.0, fused=fast)
    amp = precision == "bf16"

    def run():
        with torch.profiler.record_function("sert_train_step"):
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
                loss = causal_lm_loss(model, batch, fast=fast)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
    return run


def train_flops(params_body: int, head: int, rows: int, length: int, targets: int, fast: bool) -> float:
    """6 x params per token for the body, 6 x head params per scored token (all tokens for plain HF)."""
    return 6 * params_body * rows * length + 6 * head * (targets if fast else rows * length)


# ----------------------------------------------------------------------------- decoding
def decode_step_fn(model, mode: str, rows: int, context: int, dtype: torch.dtype):
    """One new token for ``rows`` rows whose KV cache holds ``context`` positions."""
    from transformers import DynamicCache

    from sert.engine import preallocate
    from sert.models import set_attention
    from sert.sampling import sample_tokens

    set_attention(model, "sert" if mode == "sert" else "sdpa")
    cfg = model.config
    ids = torch.randint(10, cfg.vocab_size, (1, context))
    with torch.no_grad():
        out = model(input_ids=ids, use_cache=True)
    u = torch.rand(rows)
    tokens = torch.randint(10, cfg.vocab_size, (rows, 1))
    pos = torch.full((rows, 1), context)
    mask = torch.ones(rows, context + 1, dtype=torch.long)

    def fresh_cache():
        cache = DynamicCache(config=cfg)
        for i, layer in enumerate(out.cache.layers):
            cache.update(layer.keys.repeat(rows, 1, 1, 1), layer.values.repeat(rows, 1, 1, 1), i)
        if mode == "sert":
            preallocate(cache, context + 64)
        return cache

    state = {"cache": fresh_cache(), "n": 0}

    @torch.no_grad()
    def run():
        if state["n"] >= 32:  # keep the context length steady
            state["cache"], state["n"] = fresh_cache(), 0
            if mode == "plain":
                torch.cuda.empty_cache() if torch.cuda.is_available() else None
        with torch.profiler.record_function("sert_decode_step"):
            n = state["n"]
            m = torch.ones(rows, context + n + 1, dtype=torch.long)
            o = model(input_ids=tokens, attention_mask=m, position_ids=pos + n, cache=state["cache"],
                      use_cache=True)
            logits = o.logits[:, -1].float()
            if mode == "sert":
                sample_tokens(logits, 10, 0.95, 1.0, u)
                logits.logsumexp(-1)
            else:  # transformers' warpers: full-vocabulary sort for top-p
                from transformers.generation.logits_process import TopKLogitsWarper, TopPLogitsWarper

                scores = TopPLogitsWarper(0.95)(tokens, TopKLogitsWarper(10)(tokens, logits))
                torch.multinomial(scores.softmax(-1), 1)
                logits.log_softmax(-1)
        state["n"] += 1
    del mask
    return run


# ----------------------------------------------------------------------------- report
def onednn_kernels(args) -> dict:
    """Run one bf16 training step with ONEDNN_VERBOSE=1 in a child process and count matmul kernels."""
    cmd = [sys.executable, __file__, "--model", args.model, "--rows", str(args.rows), "--length", str(args.length),
           "--what", "train", "--modes", "sert", "--warmup", "0", "--reps", "1", "--no-json", "--quiet"]
    env = {**os.environ, "ONEDNN_VERBOSE": "1"}
    out = subprocess.run(cmd, env=env, capture_output=True, text=True).stdout
    kernels = collections.Counter()
    for line in out.splitlines():
        if line.startswith("onednn_verbose") and ",exec," in line:
            parts = line.split(",")
            kernels[f"{parts[3]}:{parts[5]}"] += 1  # primitive kind : implementation
    return dict(kernels.most_common(12))


def table(title: str, res: dict, flops: float | None, peak: float | None) -> str:
    lines = [f"**{title}**: {res['wall_s'] * 1e3:.1f} ms per step (median; CPU time {res['cpu_s'] * 1e3:.1f} ms)"
             + (f", {flops / res['wall_s'] / 1e9:.0f} GFLOP/s = {100 * flops / res['wall_s'] / 1e9 / peak:.0f}% "
                f"of the shape peak" if flops and peak else ""), "",
             "| category | ms (profiled step) | share |", "|---|---|---|"]
    total = res["profiled_s"]
    for cat, s in res["categories"].items():
        lines.append(f"| {cat} | {s * 1e3:.1f} | {100 * s / total:.0f}% |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m", help="smollm2-135m, tiny, a conf/model name or a local dir")
    ap.add_argument("--what", default="train,decode")
    ap.add_argument("--modes", default="plain,sert")
    ap.add_argument("--rows", type=int, default=8, help="training batch (paper: 8)")
    ap.add_argument("--length", type=int, default=100, help="tokens per training row (rationale length)")
    ap.add_argument("--decode-rows", type=int, default=200, help="8 questions x 25 paths")
    ap.add_argument("--context", type=int, default=96)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--precision", default="auto", help="auto (bf16 where fast, else fp32) | bf16 | fp32")
    ap.add_argument("--onednn", action="store_true", help="also count oneDNN matmul kernels of one step")
    ap.add_argument("--json", default=str(ROOT / "outputs" / "profile_step.json"))
    ap.add_argument("--no-json", action="store_true")
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args()

    from sert.hardware import bf16_fast

    precision = args.precision if args.precision != "auto" else ("bf16" if bf16_fast("cpu") else "fp32")
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    info = machine()
    result = {"machine": info, "model": args.model, "precision": precision, "steps": {}}
    md = [f"CPU: {info['cpu']} ({', '.join(info['flags'])}), {info['threads']} threads, torch {info['torch']}, "
          f"load average {info['load_average']}; precision {precision}", ""]
    if "train" in args.what:
        model = load_bench_model(args.model, dtype="float32")
        model.train()
        head = model.get_output_embeddings().weight.numel()
        body = sum(p.numel() for p in model.parameters()) - (0 if model.config.tie_word_embeddings else head)
        body -= model.get_input_embeddings().weight.numel()  # the embedding lookup is no matmul
        peak = shape_peak(model.config, args.rows * args.length, dtype, train=True) if not args.quiet else None
        batch = train_batch(model.config.vocab_size, args.rows, args.length)
        targets = int((batch["labels"][:, 1:] != -100).sum())
        for mode in args.modes.split(","):
            res = profile_fn(train_step_fn(model, batch, mode, precision), args.warmup, args.reps)
            flops = train_flops(body, head, args.rows, args.length, targets, mode == "sert")
            res["tokens_per_s"] = round(args.rows * args.length / res["wall_s"], 1)
            res["gflops"] = round(flops / res["wall_s"] / 1e9, 1)
            res["shape_peak_gflops"] = peak
            result["steps"][f"train_{mode}"] = res
            md += [table(f"training step, {mode}, {args.rows} x {args.length} tokens, "
                         f"{res['tokens_per_s']} tok/s", res, flops, peak), ""]
    if "decode" in args.what:
        model = load_bench_model(args.model, dtype="bfloat16" if dtype == torch.bfloat16 else "float32").eval()
        params = sum(p.numel() for p in model.parameters()) - model.get_input_embeddings().weight.numel()
        if model.config.tie_word_embeddings:
            params += model.get_output_embeddings().weight.numel()
        peak = shape_peak(model.config, args.decode_rows, dtype) if not args.quiet else None
        for mode in args.modes.split(","):
            res = profile_fn(decode_step_fn(model, mode, args.decode_rows, args.context, dtype), args.warmup,
                             args.reps)
            flops = 2 * params * args.decode_rows
            res["tokens_per_s"] = round(args.decode_rows / res["wall_s"], 1)
            res["gflops"] = round(flops / res["wall_s"] / 1e9, 1)
            res["shape_peak_gflops"] = peak
            result["steps"][f"decode_{mode}"] = res
            md += [table(f"decoding step, {mode}, {args.decode_rows} rows, cache {args.context}, "
                         f"{res['tokens_per_s']} tok/s", res, flops, peak), ""]
    if args.onednn:
        result["onednn_kernels"] = onednn_kernels(args)
        md += ["oneDNN kernels of one sert training step (primitive:implementation -> calls):", "",
               *[f"- `{k}`: {v}" for k, v in result["onednn_kernels"].items()], ""]
    result["markdown"] = "\n".join(md)
    if not args.quiet:
        print(result["markdown"])
    if not args.no_json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
        print(f"JSON: {args.json}")


if __name__ == "__main__":
    main()
