"""Benchmark: evaluation decoding through ``sert.engine.decode`` vs HF ``model.generate`` batched.

Same model, same prompts (the SERT evaluation prompt ``Question: {q}. Answer:`` of the first N
CommonsenseQA test questions), greedy, same ``max_new_tokens``:
  * generate     — per batch of ``--batch-size`` length-sorted prompts, left padding +
                   ``model.generate(do_sample=False, max_new_tokens)`` (KV cache, stops when every row has
                   emitted EOS), on the same attention as ``engine`` (so their outputs must agree token for token);
  * engine_sdpa  — ``sert.engine.decode`` with transformers' SDPA attention at ``--baseline-batch-size``: the
                   engine as it was before ``model.attention=sert`` and the larger evaluation batches;
  * engine       — ``sert.engine.decode`` with ``model.attention=sert`` at ``--batch-size``: our own KV-cache
                   loop (prompt forward once, one token per step for the rows still alive, finished rows
                   dropped, cache written in place).
Each method runs in its own subprocess (peak RSS per method). Identical outputs are counted for engine vs
generate (same numerics: must all agree) and engine vs engine_sdpa (another attention kernel and batch: bf16
rounding can flip a near-tie).

    PYTHONPATH=src python experiments/bench_eval.py --model smollm2-135m --n 16 --max-new-tokens 128

--model: a model reference as ``judge.model`` accepts it (a conf/model name such as smollm2-135m or
tiny, a local dir / .gguf, a hub id). Writes ``--out`` (JSON) and prints a markdown table whose header
names the CPU, its flags, torch threads and the load average.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("SERT_SHARED_DIR") or ROOT.parent / "shared")


def prompts(n: int) -> list[str]:
    from sert.data import load_records
    from sert.prompts import Prompts

    data = SHARED / "data" / "commonsense_qa.json"
    records, _ = load_records(path=str(data), split="test", split_file=str(data.with_suffix(".split.json")), limit=n)
    return [Prompts().training_pair("self_train", r, "")[0] for r in records]


def run_generate(model, tok, texts: list[str], a) -> list[list[int]]:
    """Batched HF generate over the same length-sorted batches the engine uses."""
    import torch

    tok.padding_side = "left"
    order = sorted(range(len(texts)), key=lambda i: -len(tok(texts[i], add_special_tokens=False)["input_ids"]))
    out: list[list[int]] = [[] for _ in texts]
    for s in range(0, len(order), a.batch_size):
        idx = order[s:s + a.batch_size]
        enc = tok([texts[i] for i in idx], return_tensors="pt", padding=True, add_special_tokens=False)
        with torch.no_grad():
            gen = model.generate(**enc, max_new_tokens=a.max_new_tokens, do_sample=False, temperature=None,
                                 top_p=None, top_k=None, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
        for r, i in enumerate(idx):
            row = gen[r, enc["input_ids"].shape[1]:].tolist()
            out[i] = row[:row.index(tok.eos_token_id)] if tok.eos_token_id in row else row
    return out


def run_engine(model, tok, texts: list[str], a) -> list[list]:
    from sert.engine import decode

    outs = decode(model, tok, texts, max_new_tokens=a.max_new_tokens, batch_size=a.batch_size)
    return [[o.num_tokens, o.text] for o in outs]


def child(a) -> None:
    import torch

    from sert.hardware import resolve_dtype
    from sert.models import load_model, model_spec

    torch.set_num_threads(a.threads)
    dtype = resolve_dtype(a.dtype, "cpu")
    attention = "sdpa" if a.only == "engine_sdpa" else "sert"
    model, tok = load_model(**{**model_spec(a.model), "dtype": dtype, "device": "cpu", "attention": attention})
    texts = prompts(a.n)
    if a.only == "engine_sdpa":
        a.batch_size = a.baseline_batch_size
    t0 = time.perf_counter()
    if a.only == "generate":
        ids = run_generate(model, tok, texts, a)
        outputs = [[len(r), tok.decode(r, skip_special_tokens=True)] for r in ids]
    else:
        outputs = run_engine(model, tok, texts, a)
    wall = time.perf_counter() - t0
    ntok = sum(n for n, _ in outputs)
    print(json.dumps({"method": a.only, "dtype": dtype, "batch_size": a.batch_size, "attention": attention, "prompts": len(texts), "new_tokens": ntok,
                      "wall_s": round(wall, 2), "tokens_per_s": round(ntok / wall, 1),
                      "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
                      "outputs": outputs}))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--n", type=int, default=16, help="CommonsenseQA test questions")
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--baseline-batch-size", type=int, default=16, help="engine_sdpa's batch (the old default)")
    p.add_argument("--methods", default="generate,engine_sdpa,engine")
    p.add_argument("--dtype", default="auto", help="auto | float32 | bfloat16 (resolved by sert.hardware)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default=str(ROOT / "experiments" / "results" / "bench_eval.json"))
    p.add_argument("--only", choices=["generate", "engine_sdpa", "engine"], help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.only:
        return child(a)
    from sert.hardware import cpu_info

    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    load_before = os.getloadavg()
    results = {}
    for method in a.methods.split(","):
        out = subprocess.run([sys.executable, __file__, *sys.argv[1:], "--only", method], env=env,
                             capture_output=True, text=True, check=True)
        results[method] = json.loads(out.stdout.strip().splitlines()[-1])
    e = results["engine"]

    def agree(other: str) -> str:
        if other not in results:
            return "not run"
        o = results[other]["outputs"]
        return f"{sum(x == y for x, y in zip(o, e['outputs']))}/{len(o)}"
    cpu = cpu_info()
    header = {"command": "python experiments/bench_eval.py " + " ".join(sys.argv[1:]), "model": a.model,
              "n": a.n, "max_new_tokens": a.max_new_tokens, "batch_size": a.batch_size, "threads": a.threads,
              "cpu": cpu["model"], "flags": cpu["flags"], "loadavg_before": [round(x, 2) for x in load_before],
              "loadavg_after": [round(x, 2) for x in os.getloadavg()],
              "identical_outputs": {"engine_vs_generate": agree("generate"), "engine_vs_engine_sdpa": agree("engine_sdpa")}}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps({**header, "results": results}, indent=1))
    print(f"<!-- {header['command']} -->\n"
          f"CPU: {header['cpu']} (flags {', '.join(header['flags'])}), {a.threads} torch threads, "
          f"load average {header['loadavg_before']} before / {header['loadavg_after']} after\n"
          f"{a.model}, {a.n} CommonsenseQA test prompts, greedy, max_new_tokens {a.max_new_tokens}, dtype "
          f"{e['dtype']}; identical outputs: engine vs generate {header['identical_outputs']['engine_vs_generate']}, "
          f"engine vs engine_sdpa {header['identical_outputs']['engine_vs_engine_sdpa']}\n")
    print("| method | attention | batch | new tokens | wall s | new tok/s | vs engine_sdpa | peak RSS MB |\n"
          "|---|---|---|---|---|---|---|---|")
    base = results.get("engine_sdpa")
    for m, r in results.items():
        vs = f"{r['tokens_per_s'] / base['tokens_per_s']:.2f}x" if base else "—"
        print(f"| {m} | {r['attention']} | {r['batch_size']} | {r['new_tokens']} | {r['wall_s']} | "
              f"{r['tokens_per_s']} | {vs} | {r['peak_rss_mb']} |")


if __name__ == "__main__":
    main()
