"""Benchmarks of the CTranslate2 backend (sert.ct2), printed as JSON lines.

  accuracy: per-token log-prob error and greedy top-1 agreement of ct2 (each compute type) against torch
            fp32, teacher-forced over real CommonsenseQA text ("Question: q Answer: (X) text" of train rows)
  ppl:      paths sampled once; their ppl under torch fp32 vs each ct2 compute type, and how often the
            perplexity filter's ppl >= 5 decision flips
  speed:    generate_ct2 on N questions x 25 paths x 64 new tokens (the paper's 5 x 5 scheme), each compute
            type, plus the torch backend (generate_hf) on the same questions for reference
  teacher:  decode_ct2 zero-shot-CoT (chat template, greedy) on CSQA test questions with a local teacher

Usage (from the repo root; conversions are cached under --cache):
  python experiments/bench_ct2.py accuracy --model smollm2-135m --rows 8 --compute int8,float32
  python experiments/bench_ct2.py ppl --model smollm2-135m --questions 4 --max-new 64 --compute int8,float32
  python experiments/bench_ct2.py speed --model smollm2-135m --questions 4 --compute int8,float32 --torch
  python experiments/bench_ct2.py teacher --model ~/.cache/sert/models/qwen2.5-coder-1.5b-instruct-q4_k_m.gguf \
      --cache ~/.cache/sert --questions 8 --batch 8 --max-new 256
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from sert import ct2  # noqa: E402
from sert.models import load_model, model_spec  # noqa: E402

SHARED = [Path(os.environ["SERT_SHARED_DIR"])] if "SERT_SHARED_DIR" in os.environ else [ROOT.parent / "shared", ROOT.parents[1] / "shared"]
DATA = next((p for p in SHARED if p.exists()), SHARED[0]) / "data"


def csqa(split: str, n: int) -> list[dict]:
    rows = json.loads((DATA / "commonsense_qa.json").read_text())
    idx = json.loads((DATA / "commonsense_qa.split.json").read_text())[split][:n]
    return [{"qid": f"commonsense_qa-{i}", **rows[i]} for i in idx]


def env() -> dict:
    flags = sorted(set(open("/proc/cpuinfo").read().split()) & {"avx2", "avx512f", "avx512_bf16", "amx_bf16"})
    return {"load": os.getloadavg(), "cpu_flags": flags, "threads": torch.get_num_threads(),
            "ct2_supported": sorted(__import__("ctranslate2").get_supported_compute_types("cpu"))}


def accuracy(args) -> None:
    kwargs = {**model_spec(args.model), "device": "cpu", "dtype": "float32"}
    model, tok = load_model(**kwargs)
    texts = [f"Question: {r['question']} Answer: ({r['answer']})" for r in csqa("train", args.rows)]
    seqs = [tok(t)["input_ids"] for t in texts]
    with torch.no_grad():
        ref = [model(torch.tensor([s])).logits[0].float().log_softmax(-1).numpy() for s in seqs]
    positions = sum(len(s) - 1 for s in seqs)
    for ct in args.compute.split(","):
        path, _, _, ct = ct2._open(kwargs, args.cache, ct)
        gen = ct2._generator(path, ct, None)
        errs, agree, t0 = [], 0, time.perf_counter()
        for s, r in zip(seqs, ref):
            lp = np.asarray(gen.forward_batch([s], return_log_probs=True))[0]
            nxt = np.array(s[1:])
            errs.append(np.abs(lp[:-1][np.arange(len(nxt)), nxt] - r[:-1][np.arange(len(nxt)), nxt]))
            agree += int((lp[:-1].argmax(-1) == r[:-1].argmax(-1)).sum())
        e = np.concatenate(errs)
        print(json.dumps({"bench": "accuracy", "model": args.model, "compute_type": ct, "positions": positions,
                          "logprob_abs_err_mean": float(e.mean()), "logprob_abs_err_p99": float(np.quantile(e, 0.99)),
                          "logprob_abs_err_max": float(e.max()), "top1_agreement": agree / positions,
                          "seconds": round(time.perf_counter() - t0, 2), **env()}), flush=True)


def ppl_flips(args) -> None:
    """Paths sampled once (ct2 float32), then each path's ppl under torch fp32 and under each ct2 compute
    type (teacher-forced, ``score_batch``): how far int8 moves ppl and how often the perplexity filter's
    decision (ppl < 5 dropped, paper III-A) flips."""
    from sert.sampling import SamplingSpec

    kwargs = {**model_spec(args.model), "device": "cpu", "dtype": "float32"}
    model, tok = load_model(**kwargs)
    items = [(r["qid"], f"Question: {r['question']} Answer:") for r in csqa("train", args.questions)]
    res = ct2.generate_ct2(kwargs, items, SamplingSpec(max_new_tokens=args.max_new), 0, "float32", args.cache)
    seqs = [(tok(p)["input_ids"], path["token_ids"]) for (_, p), paths in zip(items, res) for path in paths
            if path["num_tokens"]]
    with torch.no_grad():
        ref = []
        for pids, ids in seqs:
            lp = model(torch.tensor([pids + ids])).logits[0].log_softmax(-1)
            ref.append(float(-lp[len(pids) - 1:-1].gather(1, torch.tensor(ids)[:, None]).mean()))
    ref = np.array(ref)
    for ct in args.compute.split(","):
        path, _, _, ct = ct2._open(kwargs, args.cache, ct)
        gen = ct2._generator(path, ct, None)
        scored = gen.score_batch([tok.convert_ids_to_tokens(p + i) for p, i in seqs], max_input_length=0)
        got = np.array([-np.mean(list(s.log_probs)[len(p) - 1:]) for s, (p, _) in zip(scored, seqs)])
        flips = int(((np.exp(ref) < 5) != (np.exp(got) < 5)).sum())
        print(json.dumps({"bench": "ppl", "model": args.model, "compute_type": ct, "paths": len(seqs),
                          "mean_abs_log_ppl_diff": float(np.abs(got - ref).mean()),
                          "max_abs_log_ppl_diff": float(np.abs(got - ref).max()),
                          "median_ppl_torch": float(np.median(np.exp(ref))), "median_ppl_ct2": float(np.median(np.exp(got))),
                          "filter_flips_at_5": flips, "torch_below_5": int((np.exp(ref) < 5).sum()), **env()}), flush=True)


def speed(args) -> None:
    from sert.generate import generate_hf
    from sert.sampling import SamplingSpec

    kwargs = {**model_spec(args.model), "device": "cpu", "dtype": "float32"}
    items = [(r["qid"], f"Question: {r['question']} Answer:") for r in csqa("train", args.questions)]
    spec = SamplingSpec(max_new_tokens=args.max_new)
    for ct in args.compute.split(","):
        ct2.convert(kwargs, args.cache, ct2.QUANTIZATION[ct2.compute_type_of(ct)])  # not timed
        t0 = time.perf_counter()
        res = ct2.generate_ct2(kwargs, items, spec, 0, ct, args.cache)
        report("ct2", ct, res, time.perf_counter() - t0, args)
    if args.torch:
        model, tok = load_model(**kwargs)
        t0 = time.perf_counter()
        res = generate_hf(model, tok, items, spec, 0, batch_size=args.questions)
        report("torch", "float32", res, time.perf_counter() - t0, args)


def report(backend: str, ct: str, res: list[list[dict]], seconds: float, args) -> None:
    paths = [p for r in res for p in r]
    ntok = sum(p["num_tokens"] for p in paths)
    finish = {k: sum(p["finish_reason"] == k for p in paths) for k in ("eos", "stop", "length")}
    ppl = [p["ppl"] for p in paths if p["ppl"] is not None]
    print(json.dumps({"bench": "speed", "backend": backend, "compute_type": ct, "model": args.model,
                      "questions": len(res), "paths": len(paths), "max_new_tokens": args.max_new, "tokens": ntok,
                      "seconds": round(seconds, 2), "tok_s": round(ntok / seconds, 1),
                      "paths_s": round(len(paths) / seconds, 2), "finish": finish,
                      "median_ppl": float(np.median(ppl)) if ppl else None, **env()}), flush=True)


def teacher(args) -> None:
    from sert.engine import DecodeStats

    kwargs = model_spec(str(Path(args.model).expanduser()) if args.model.endswith(".gguf") else args.model)
    path, tok, _, ct = ct2._open(kwargs, args.cache, args.compute)
    rows = csqa("test", args.questions)
    prompts = [tok.apply_chat_template([{"role": "user", "content": f"Question: {r['question']}. Answer: Let's think step by step."}],
                                       tokenize=False, add_generation_prompt=True) for r in rows]
    t0 = time.perf_counter()
    ct2.decode_ct2(kwargs, prompts[:1], max_new_tokens=1, compute_type=ct, cache_dir=args.cache)  # load once
    load_s = time.perf_counter() - t0
    stats = DecodeStats()
    out = ct2.decode_ct2(kwargs, prompts, max_new_tokens=args.max_new, batch_size=args.batch, temperature=0.0,
                         compute_type=ct, cache_dir=args.cache, stats=stats)
    for r, d in zip(rows, out):
        print(json.dumps({"qid": r["qid"], "gold": r["answer"], "finish": d.finish_reason, "tokens": d.num_tokens,
                          "tail": d.text[-160:]}), flush=True)
    print(json.dumps({"bench": "teacher", "model": args.model, "ct2_dir": str(path), "compute_type": ct,
                      "questions": len(rows), "batch": args.batch, "max_new_tokens": args.max_new,
                      "load_seconds": round(load_s, 1), "tokens": stats.new_tokens, "seconds": round(stats.seconds, 1),
                      "tok_s": round(stats.new_tokens / stats.seconds, 2), **env()}), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("bench", choices=["accuracy", "ppl", "speed", "teacher"])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--cache", default=str(ROOT / "outputs" / "cache"))
    ap.add_argument("--compute", default="int8,float32")
    ap.add_argument("--rows", type=int, default=8)
    ap.add_argument("--questions", type=int, default=4)
    ap.add_argument("--max-new", type=int, default=64)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--torch", action="store_true", help="speed: also time the torch backend")
    args = ap.parse_args()
    {"accuracy": accuracy, "ppl": ppl_flips, "speed": speed, "teacher": teacher}[args.bench](args)


if __name__ == "__main__":
    main()
