"""Benchmark: latent-path sampling speed and fidelity, on the same prompts and settings for every method.

    PYTHONPATH=src python experiments/bench_generate.py                       # SmolLM2-135M, 8 q x 25 paths x 128
    PYTHONPATH=src python experiments/bench_generate.py --model tiny --questions 2 --max-new-tokens 16  # smoke

Methods (one process, the model loaded once, timings exclude loading; no stop strings, EOS ends a path):
  * naive        per question: one forward for the top-k first tokens, then per first token HF
                 ``generate(num_return_sequences=S)`` and a second forward over every output for its ppl
                 (very slow: runs on ``--naive-questions`` questions only, stated in the table);
  * hf_fp32      HF ``generate`` with ALL paths of ALL questions in one left-padded batch (no ppl);
  * hf_bf16      the same in bf16 (only where the CPU has fast bf16);
  * sert_fp32    ``sert.sampling.sample_batch``, all questions in one batch (prompt encoded once, shared KV
                 cache, ppl in the loop), with ``model.attention=sert`` (the one-token step's attention);
  * sert_bf16    the same in bf16 (only where the CPU has fast bf16);
  * sert_*_sdpa  the same sampler with transformers' SDPA attention (the sampler before ``sert.attention``);
  HF rows run on SDPA attention;
  * ct2_<type>   ``sert.ct2.generate_ct2`` per CTranslate2 compute type (if sert.ct2 and ctranslate2 exist).
Columns: tokens/s, ratio to hf_fp32, for fast (non-fp32) paths the mean absolute difference between a path's
mean per-token log-prob and the fp32 model's (teacher-forced, on ``--fidelity-paths`` paths), and the shares of
two peaks measured in this run: tokens/s x 2 x params FLOP against torch.mm at 4096^3 and at the model's own
shapes for one step's rows (``benchlib.shape_peak``), per dtype. Writes ``<out>/bench_generate.json`` and ``<out>/bench_generate.md``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from dataclasses import replace
from pathlib import Path

# Idle OpenMP threads sleep instead of spinning: on a shared (oversubscribed) CPU a spinning team turns every
# small op into a wait for a descheduled thread (measured here: RMSNorm on 200x576, 2 threads, load ~8:
# 85 ms spinning vs 0.4 ms passive). Must be set before torch loads its OpenMP runtime.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "experiments"))
SHARED = Path(os.environ.get("SERT_SHARED_DIR") or ROOT.parent / "shared")
FALLBACK_QUESTIONS = ["Where do you keep milk cold?", "What do birds use to fly?", "Where does the sun rise?",
                      "What melts ice?"]


def model_kwargs(name: str) -> dict:
    from sert.models import model_spec

    if name == "tiny":
        return {"name_or_path": "tiny", "random_init": {"n_layer": 2, "n_embd": 32, "n_head": 2, "n_positions": 512}}
    if name == "smollm2":
        return model_spec("smollm2-135m")
    return model_spec(name)


def questions(n: int) -> list[str]:
    path = SHARED / "data" / "commonsense_qa.json"
    qs = [r["question"] for r in json.loads(path.read_text())[:n]] if path.exists() else []
    qs = qs or FALLBACK_QUESTIONS
    return [f"Question: {q} Answer:" for q in (qs * n)[:n]]


# ----------------------------------------------------------------------------- methods
def completion_len(row: list[int], eos: int) -> int:
    return row.index(eos) if eos in row else len(row)


@torch.no_grad()
def first_tokens(model, tok, prompts: list[str], k: int):
    tok.padding_side = "left"
    enc = tok(prompts, return_tensors="pt", padding=True)
    pos = (enc.attention_mask.cumsum(-1) - 1).clamp(min=0)
    logits = model(**enc, position_ids=pos, logits_to_keep=1).logits[:, -1].float()
    return enc, torch.topk(logits, k, dim=-1).indices


@torch.no_grad()
def run_hf_batched(model, tok, prompts, a) -> dict:
    P = a.first_k * a.samples
    enc, top = first_tokens(model, tok, prompts, a.first_k)
    first = top.repeat_interleave(a.samples, 1).reshape(-1, 1)
    keep = first[:, 0] != tok.eos_token_id  # an EOS first token is an empty path: nothing to generate (as in sert)
    first = first[keep]
    ids = torch.cat([enc.input_ids.repeat_interleave(P, 0)[keep], first], 1)
    mask = torch.cat([enc.attention_mask.repeat_interleave(P, 0)[keep], torch.ones_like(first)], 1)
    torch.manual_seed(0)
    out = model.generate(input_ids=ids, attention_mask=mask, do_sample=True, top_k=a.top_k, top_p=a.top_p,
                         temperature=1.0, max_new_tokens=a.max_new_tokens - 1, pad_token_id=tok.eos_token_id,
                         eos_token_id=tok.eos_token_id)
    tokens = sum(1 + completion_len(r, tok.eos_token_id) for r in out[:, ids.shape[1]:].tolist())
    return {"tokens": tokens, "paths": None}


@torch.no_grad()
def run_naive(model, tok, prompts, a) -> dict:
    n = 0
    for prompt in prompts[:a.naive_questions]:
        ids = tok(prompt, return_tensors="pt").input_ids
        for t in torch.topk(model(ids).logits[0, -1], a.first_k).indices:
            if t.item() == tok.eos_token_id:  # an empty path, as in sert
                continue
            inp = torch.cat([ids, t.view(1, 1)], dim=1)
            out = model.generate(inp, attention_mask=torch.ones_like(inp), do_sample=True, top_k=a.top_k,
                                 top_p=a.top_p, temperature=1.0, max_new_tokens=a.max_new_tokens - 1,
                                 num_return_sequences=a.samples, pad_token_id=tok.eos_token_id)
            for seq in out:  # second pass: perplexity of the completion under the model
                comp = seq[ids.shape[1]:].tolist()
                comp = comp[:completion_len(comp, tok.eos_token_id)]
                full = torch.tensor([ids[0].tolist() + comp])
                logp = model(full).logits[0, :-1].log_softmax(-1)
                _ = torch.exp(-logp[torch.arange(full.shape[1] - 1), full[0, 1:]][ids.shape[1] - 1:].mean())
                n += len(comp)
    return {"tokens": n, "paths": None}


def spec_of(a):
    from sert.sampling import SamplingSpec

    return SamplingSpec(first_k=a.first_k, samples_per_token=a.samples, top_k=a.top_k, top_p=a.top_p,
                        max_new_tokens=a.max_new_tokens, stop=())


def run_sert(model, tok, prompts, a) -> dict:
    from sert.sampling import sample_batch

    paths = []
    for i in range(0, len(prompts), a.batch_size):
        chunk = prompts[i:i + a.batch_size]
        paths += sample_batch(model, tok, chunk, [str(i + j) for j in range(len(chunk))], spec_of(a), seed=0)
    return {"tokens": sum(p["num_tokens"] for q in paths for p in q), "paths": paths}


def warm_ct2(compute_type: str, kwargs: dict, prompts, a) -> None:
    """Convert (cached) and load once, outside the timing: a 2-token run on one question."""
    from sert.ct2 import generate_ct2

    generate_ct2(kwargs, [("warm", prompts[0])], replace(spec_of(a), max_new_tokens=2), 0, compute_type,
                 str(Path(a.out) / "ct2_cache"))


def run_ct2(compute_type: str, kwargs: dict, prompts, a) -> dict:
    from sert.ct2 import generate_ct2

    items = [(str(i), p) for i, p in enumerate(prompts)]
    paths = generate_ct2(kwargs, items, spec_of(a), 0, compute_type, str(Path(a.out) / "ct2_cache"))
    return {"tokens": sum(p["num_tokens"] for q in paths for p in q), "paths": paths}


@torch.no_grad()
def fidelity(model32, tok, prompts: list[str], paths: list[list[dict]], limit: int) -> float | None:
    """Mean over paths of |mean per-token log-prob of the fast method - the fp32 model's (teacher-forced)|."""
    diffs = []
    for prompt, qpaths in zip(prompts, paths):
        pids = tok(prompt).input_ids
        for p in qpaths:
            if len(diffs) >= limit:
                break
            if not p["num_tokens"] or p["ppl"] is None:
                continue
            ids = torch.tensor([pids + p["token_ids"]])
            logp = model32(ids).logits[0, :-1].float().log_softmax(-1)
            lp = logp[torch.arange(ids.shape[1] - 1), ids[0, 1:]][len(pids) - 1:]
            diffs.append(abs(-math.log(p["ppl"]) - lp.mean().item()))
    return sum(diffs) / len(diffs) if diffs else None


# ----------------------------------------------------------------------------- main
def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2", help="smollm2 | tiny | a conf/model name, local dir or .gguf")
    p.add_argument("--questions", type=int, default=8)
    p.add_argument("--naive-questions", type=int, default=2)
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--first-k", type=int, default=5)
    p.add_argument("--samples", type=int, default=5)
    p.add_argument("--top-k", type=int, default=10)
    p.add_argument("--top-p", type=float, default=0.95)
    p.add_argument("--batch-size", type=int, default=8, help="questions per sample_batch call (sert)")
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--fidelity-paths", type=int, default=16)
    p.add_argument("--methods", default="hf_fp32,hf_bf16,sert_fp32_sdpa,sert_fp32,sert_bf16_sdpa,sert_bf16",
                   help="naive,hf_fp32,hf_bf16,sert_fp32_sdpa,sert_fp32,sert_bf16_sdpa,sert_bf16,ct2")
    p.add_argument("--out", default=str(ROOT / "experiments" / "results"))
    p.add_argument("--force-bf16", action="store_true",
                   help="run the bf16 rows on a CPU without fast bf16 too (emulated: their speed means nothing "
                        "there, their log-prob error vs fp32 does)")
    a = p.parse_args()

    from benchlib import large_peak, shape_peak

    from sert.hardware import bf16_fast, cpu_info
    from sert.models import load_model, set_attention

    torch.set_num_threads(a.threads)
    Path(a.out).mkdir(parents=True, exist_ok=True)
    load_start = os.getloadavg()
    bf16 = bf16_fast("cpu")
    kwargs = model_kwargs(a.model)
    model, tok = load_model(**kwargs, device="cpu")
    rows_per_step = a.batch_size * a.first_k * a.samples
    dtypes = [torch.float32] + ([torch.bfloat16] if bf16 else [])
    peaks = {str(d).split(".")[1]: large_peak(d) for d in dtypes}
    shape_peaks = {str(d).split(".")[1]: shape_peak(model.config, rows_per_step, d) for d in dtypes}
    params = sum(t.numel() for t in model.parameters())
    prompts = questions(a.questions)
    wanted = a.methods.split(",")
    rows, notes = [], []

    def timed(name: str, fn, *args, dtype: str = "float32", questions: int = a.questions) -> dict:
        t0 = time.perf_counter()
        res = fn(*args)
        wall = time.perf_counter() - t0
        row = {"method": name, "dtype": dtype, "questions": questions, "tokens": res["tokens"],
               "wall_s": round(wall, 2), "tok_s": round(res["tokens"] / wall, 1)}
        print(json.dumps(row), flush=True)
        row["_paths"] = res["paths"]
        rows.append(row)
        return row

    if "naive" in wanted:
        timed("naive", run_naive, model, tok, prompts, a, questions=min(a.naive_questions, a.questions))
    def with_attention(m, attention: str, fn):
        def run(*args):
            set_attention(m, attention)
            try:
                return fn(*args)
            finally:
                set_attention(m, "sert")
        return run

    if "hf_fp32" in wanted:
        timed("hf_fp32", with_attention(model, "sdpa", run_hf_batched), model, tok, prompts, a)
    if "sert_fp32_sdpa" in wanted:
        timed("sert_fp32_sdpa", with_attention(model, "sdpa", run_sert), model, tok, prompts, a)
    if "sert_fp32" in wanted:
        timed("sert_fp32", run_sert, model, tok, prompts, a)
    if (bf16 or a.force_bf16) and any(m in wanted for m in ("hf_bf16", "sert_bf16", "sert_bf16_sdpa")):
        if not bf16:
            notes.append("bf16 rows forced on a CPU without fast bf16: emulated, so their tok/s is not a speed "
                         "figure; their log-prob error vs fp32 is")
        model16 = load_model(**{**kwargs, "dtype": "bfloat16"}, device="cpu")[0]
        if "hf_bf16" in wanted:
            timed("hf_bf16", with_attention(model16, "sdpa", run_hf_batched), model16, tok, prompts, a,
                  dtype="bfloat16")
        if "sert_bf16_sdpa" in wanted:
            timed("sert_bf16_sdpa", with_attention(model16, "sdpa", run_sert), model16, tok, prompts, a,
                  dtype="bfloat16")
        if "sert_bf16" in wanted:
            timed("sert_bf16", run_sert, model16, tok, prompts, a, dtype="bfloat16")
        del model16
    elif "hf_bf16" in wanted or "sert_bf16" in wanted:
        notes.append(f"bf16 rows skipped: this CPU has no fast bf16 ({', '.join(cpu_info()['flags'])})")
    if "ct2" in wanted:
        try:
            import ctranslate2

            import sert.ct2  # noqa: F401
            types = sorted(ctranslate2.get_supported_compute_types("cpu"))
        except ImportError as e:
            types = []
            notes.append(f"CTranslate2 rows skipped: {e}")
        for ct in types:
            try:
                warm_ct2(ct, kwargs, prompts, a)
                timed(f"ct2_{ct}", run_ct2, ct, kwargs, prompts, a, dtype=ct)
            except Exception as e:  # a compute type the model/converter does not support: note it, go on
                notes.append(f"ct2 {ct}: {type(e).__name__}: {e}")

    ref = next((r for r in rows if r["method"] == "hf_fp32"), None)
    for r in rows:
        flops = 2 * params * r["tok_s"]
        peak = peaks.get(r["dtype"], peaks["float32"])
        r["vs_hf_fp32"] = round(r["tok_s"] / ref["tok_s"], 2) if ref else None
        r["gflops"] = round(flops / 1e9, 1)
        r["roofline"] = round(flops / (peak * 1e9), 3)
        r["of_shape_peak"] = round(flops / (shape_peaks.get(r["dtype"], shape_peaks["float32"]) * 1e9), 3)
        paths = r.pop("_paths")
        fast = r["dtype"] not in ("float32",) and paths is not None
        r["logprob_mad"] = fidelity(model, tok, prompts, paths, a.fidelity_paths) if fast else None
    load_end = os.getloadavg()
    info = cpu_info()
    report = {"cpu": info["model"], "flags": info["flags"], "threads": a.threads, "torch": torch.__version__,
              "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
              "python": platform.python_version(), "model": a.model, "params": params,
              "settings": {k: getattr(a, k) for k in ("questions", "naive_questions", "first_k", "samples",
                                                      "max_new_tokens", "top_k", "top_p", "batch_size")},
              "gemm_peak_gflops": {k: round(v, 1) for k, v in peaks.items()},
              "shape_peak_gflops": shape_peaks, "rows_per_step": rows_per_step,
              "load_avg_start": [round(x, 2) for x in load_start], "load_avg_end": [round(x, 2) for x in load_end],
              "rows": rows, "notes": notes}
    (Path(a.out) / "bench_generate.json").write_text(json.dumps(report, indent=2) + "\n")
    md = markdown(report)
    (Path(a.out) / "bench_generate.md").write_text(md)
    print(md)


def markdown(rep: dict) -> str:
    s = rep["settings"]
    lines = [f"CPU: {rep['cpu']} ({', '.join(rep['flags'])}), {rep['threads']} threads "
             f"(OMP_WAIT_POLICY={rep['omp_wait_policy']}), torch {rep['torch']}; "
             "matmul peaks measured in this run, at 4096^3: " + ", ".join(
                 f"{k} {v} GFLOP/s" for k, v in rep["gemm_peak_gflops"].items())
             + f"; at the model's shapes for {rep['rows_per_step']} rows: " + ", ".join(
                 f"{k} {v} GFLOP/s" for k, v in rep["shape_peak_gflops"].items()),
             f"Model {rep['model']} ({rep['params'] / 1e6:.1f} M params, 2 x params FLOP/token); "
             f"{s['questions']} questions x {s['first_k'] * s['samples']} paths x {s['max_new_tokens']} new tokens, "
             f"top-k {s['top_k']} / top-p {s['top_p']}, no stop strings; load average "
             f"{rep['load_avg_start'][0]} at start, {rep['load_avg_end'][0]} at end", "",
             "| method | dtype | questions | tokens | wall s | tok/s | vs HF generate fp32 | mean abs Δ log ppl vs fp32 "
             "| GFLOP/s | of 4096^3 peak | of shape peak |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rep["rows"]:
        mad = "—" if r["logprob_mad"] is None else f"{r['logprob_mad']:.4f}"
        ratio = "—" if r["vs_hf_fp32"] is None else f"{r['vs_hf_fp32']:.2f}x"
        lines.append(f"| {r['method']} | {r['dtype']} | {r['questions']} | {r['tokens']} | {r['wall_s']} | "
                     f"{r['tok_s']} | {ratio} | {mad} | {r['gflops']} | {100 * r['roofline']:.1f}% | "
                     f"{100 * r['of_shape_peak']:.1f}% |")
    if any(r["dtype"] not in rep["gemm_peak_gflops"] for r in rep["rows"]):
        lines.append("\nRows in a dtype without a measured peak (int8 compute types) use the float32 GEMM peak.")
    lines += [f"\n{n}" for n in rep["notes"]]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
