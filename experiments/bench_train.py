"""Training throughput: sert's trainer (dynamic padding + length-grouped batches) against a plain
transformers Trainer that pads every batch to a fixed ``max_length`` (random batches), same data, same
model, same steps. Reports real (non-padding) tokens/s and the padded tokens each one pushed through.

    python experiments/bench_train.py                       # small GPT-2 shape, StrategyQA rationales, CPU
    python experiments/bench_train.py --n 512 --layers 4 --device cuda

Data: StrategyQA questions with their gold rationale as the reasoning, rendered in the SERT training
format (``Question: q. Answer: r So the answer is a.``) and tokenised with the GPT-2 tokenizer.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("SERT_SHARED_DIR", ROOT.parent / "shared"))
sys.path.insert(0, str(ROOT / "src"))

from sert.data import make_record  # noqa: E402
from sert.models import load_model  # noqa: E402
from sert.prompts import Prompts  # noqa: E402
from sert.train import CountingTrainer, HFTrainer  # noqa: E402
from sert.training_data import Example, PadCollator, tokenize_examples  # noqa: E402


def examples(path: Path, n: int) -> list[Example]:
    rows = json.loads(path.read_text())[:n]
    p = Prompts()
    return [Example(*p.training_pair("self_train", make_record(r, str(i)), r.get("rationale", "")))
            for i, r in enumerate(rows)]


def run(fixed: bool, args, data: list[Example]) -> dict:
    spec = {"n_layer": args.layers, "n_embd": args.embd, "n_head": args.heads, "n_positions": 1024, "seed": 0}
    model, tok = load_model("bench", random_init=spec, tokenizer=args.tokenizer, device=args.device)
    cfg = HFTrainer(max_steps=args.steps, batch_size=args.batch_size, max_length=args.max_length, save_strategy="no",
                    logging_steps=10_000, group_by_length=not fixed)
    rows = tokenize_examples(tok, data, max_length=args.max_length).rows
    with tempfile.TemporaryDirectory() as d:
        targs = cfg.training_arguments(Path(d), seed=0, use_cpu=args.device == "cpu", has_eval=False)
        collator = PadCollator(tok.pad_token_id, pad_to=args.max_length if fixed else None)
        trainer = CountingTrainer(model=model, args=targs, data_collator=collator, train_dataset=rows)
        start = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - start
    return {"trainer": "plain Trainer, pad to max_length" if fixed else "sert (dynamic pad + length groups)",
            "steps": trainer.state.global_step, "seconds": round(seconds, 2), "real_tokens": trainer.real_tokens,
            "padded_tokens": trainer.padded_tokens,
            "padding_share": round(1 - trainer.real_tokens / trainer.padded_tokens, 3),
            "real_tokens_per_s": round(trainer.real_tokens / seconds, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default=str(SHARED / "data" / "strategy_qa.json"))
    ap.add_argument("--tokenizer", default=str(SHARED / "tokenizers" / "gpt2"))
    ap.add_argument("--n", type=int, default=256)
    ap.add_argument("--steps", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--max-length", type=int, default=256)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--embd", type=int, default=128)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    data = examples(Path(args.data), args.n)
    results = [run(False, args, data), run(True, args, data)]
    print("| trainer | steps | s | real tokens | padded tokens | padding | real tok/s |\n|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['trainer']} | {r['steps']} | {r['seconds']} | {r['real_tokens']} | {r['padded_tokens']} | "
              f"{r['padding_share']:.1%} | {r['real_tokens_per_s']} |")
    print(f"speed-up (real tok/s): {results[0]['real_tokens_per_s'] / results[1]['real_tokens_per_s']:.2f}x")


if __name__ == "__main__":
    main()
