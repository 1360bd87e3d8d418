"""Training throughput (real, non-padding tokens per second), same data, model and steps:

* ``HF Trainer default``: transformers' Trainer padding every batch to ``max_length`` (random batches);
* ``sert fp32``: sert's trainer (``trainer=sft``: dynamic padding + length-grouped batches), fp32;
* ``sert bf16``: the same under bf16 autocast (fp32 master weights), only where the device has fast
  bf16 (``sert.hardware.bf16_fast``; else a row says why it is skipped; ``--bf16 on`` forces it).

    python experiments/bench_train.py                          # small random GPT-2 shape, GPT-2 tokenizer
    python experiments/bench_train.py --model smollm2-135m --steps 4 --max-length 128
    python experiments/bench_train.py --json outputs/bench_train.json

tok/s is timed from the end of the first optimizer step to the end of the last (the first step's
warm-up is left out), so ``--steps`` must be >= 2. Data: StrategyQA questions with their gold rationale
as the reasoning, in the SERT training format (``Question: q. Answer: r So the answer is a.``).
Prints a markdown table headed by the CPU model and flags, and writes the same as JSON.
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

from transformers import TrainerCallback  # noqa: E402

from sert import hardware  # noqa: E402
from sert.data import make_record  # noqa: E402
from sert.models import load_model, model_spec  # noqa: E402
from sert.prompts import Prompts  # noqa: E402
from sert.training._counting import CountingTrainer  # noqa: E402
from sert.training.data import Example, PadCollator, tokenize_examples  # noqa: E402
from sert.training.sft import HFTrainer  # noqa: E402


def examples(path: Path, n: int) -> list[Example]:
    rows = json.loads(path.read_text())[:n]
    p = Prompts()
    return [Example(*p.training_pair("self_train", make_record(r, str(i)), r.get("rationale", "")))
            for i, r in enumerate(rows)]


class StepClock(TrainerCallback):
    """Time and real tokens at the end of every optimizer step."""

    def __init__(self):
        self.marks: list[tuple[float, int]] = []

    def on_step_end(self, args, state, control, **kw):
        self.marks.append((time.perf_counter(), state.num_input_tokens_seen))

    def rate(self) -> tuple[float, int, float]:
        """(seconds, real tokens, real tok/s) from the end of step 1 to the end of the last step."""
        (t0, n0), (t1, n1) = self.marks[0], self.marks[-1]
        return t1 - t0, n1 - n0, (n1 - n0) / max(t1 - t0, 1e-9)


def load(args):
    if args.model == "random":
        spec = {"n_layer": args.layers, "n_embd": args.embd, "n_head": args.heads, "n_positions": 1024, "seed": 0}
        return load_model("bench", random_init=spec, tokenizer=args.tokenizer, device=args.device)
    return load_model(**{**model_spec(args.model), "device": args.device})


def run(kind: str, args, data: list[Example]) -> dict:
    """kind: hf_default | fp32 | bf16."""
    model, tok = load(args)
    clock = StepClock()
    cfg = HFTrainer(max_steps=args.steps, batch_size=args.batch_size, max_length=args.max_length, save_strategy="no",
                    logging_steps=10_000, group_by_length=kind != "hf_default",
                    precision="fp32" if kind == "hf_default" else kind)
    cfg.callbacks.append(clock)
    with tempfile.TemporaryDirectory() as d:
        if kind == "hf_default":
            cfg.resolved_precision = "fp32"
            rows = tokenize_examples(tok, data, max_length=cfg.context_length(model)).rows
            targs = cfg.training_arguments(Path(d), seed=0, use_cpu=args.device == "cpu", has_eval=False)
            collator = PadCollator(tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id,
                                   pad_to=cfg.context_length(model))
            trainer = CountingTrainer(model=model, args=targs, data_collator=collator, train_dataset=rows,
                                      callbacks=[clock])
            trainer.train()
            real, padded = trainer.real_tokens, trainer.padded_tokens
        else:
            s = cfg.train(model, tok, data, d, seed=0)
            real, padded = s["tokens"], s["padded_tokens"]
    seconds, timed_tokens, rate = clock.rate()
    name = {"hf_default": "HF Trainer default (pad to max_length, random batches)",
            "fp32": "sert fp32 (dynamic pad + length groups)", "bf16": "sert bf16 autocast (dynamic pad + length groups)"}
    return {"trainer": name[kind], "kind": kind, "steps": len(clock.marks), "timed_seconds": round(seconds, 2),
            "timed_real_tokens": timed_tokens, "real_tokens": real, "padded_tokens": padded,
            "padding_share": round(1 - real / max(padded, 1), 3), "real_tokens_per_s": round(rate, 1)}


def table(result: dict) -> str:
    cpu = result["hardware"]
    lines = [f"CPU: {cpu['model']}; flags: {', '.join(cpu['flags']) or '-'}; torch capability "
             f"{cpu['torch_capability']}; threads {cpu['threads']}; bf16 fast: {cpu['bf16_fast_cpu']}; "
             f"load average {result['load_average']}",
             f"model {result['model']}, batch {result['batch_size']}, max_length {result['max_length']}, "
             f"{result['steps']} steps (tok/s timed over steps 2-{result['steps']})", "",
             "| trainer | real tok/s | vs HF default | timed s | real tokens | padded tokens | padding |",
             "|---|---|---|---|---|---|---|"]
    base = next(r for r in result["rows"] if r["kind"] == "hf_default")["real_tokens_per_s"]
    for r in result["rows"]:
        if "skipped" in r:
            lines.append(f"| {r['trainer']} | skipped: {r['skipped']} | | | | | |")
            continue
        lines.append(f"| {r['trainer']} | {r['real_tokens_per_s']} | {r['real_tokens_per_s'] / base:.2f}x | "
                     f"{r['timed_seconds']} | {r['real_tokens']} | {r['padded_tokens']} | {r['padding_share']:.1%} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="random", help="random (a small GPT-2 shape) or a model reference, "
                    "e.g. smollm2-135m")
    ap.add_argument("--data", default=str(SHARED / "data" / "strategy_qa.json"))
    ap.add_argument("--tokenizer", default=str(SHARED / "tokenizers" / "gpt2"), help="for --model random")
    ap.add_argument("--n", type=int, default=256)
    ap.add_argument("--steps", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--max-length", type=int, default=256)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--embd", type=int, default=128)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--bf16", choices=["auto", "on", "off"], default="auto",
                    help="auto: the bf16 row only where bf16 is fast on --device")
    ap.add_argument("--json", default="outputs/bench_train.json")
    args = ap.parse_args()
    if args.steps < 2:
        ap.error("--steps must be >= 2 (the first step is warm-up)")
    data = examples(Path(args.data), args.n)
    load_start = " ".join(f"{x:.2f}" for x in os.getloadavg())
    rows = [run("hf_default", args, data), run("fp32", args, data)]
    fast = hardware.bf16_fast(args.device)
    if args.bf16 == "on" or (args.bf16 == "auto" and fast):
        rows.append(run("bf16", args, data))
    else:
        why = ("--bf16 off" if args.bf16 == "off" else
               f"no fast bf16 on {args.device} (CPU flags lack avx512_bf16/amx_bf16: bf16 would be emulated)")
        rows.append({"trainer": "sert bf16 autocast", "kind": "bf16", "skipped": why})
    result = {"model": args.model, "batch_size": args.batch_size, "max_length": args.max_length, "steps": args.steps,
              "examples": args.n, "device": args.device, "hardware": hardware.describe(),
              "load_average": f"{load_start} at start, {' '.join(f'{x:.2f}' for x in os.getloadavg())} at end",
              "rows": rows}
    md = table(result)
    result["markdown"] = md
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    print(md)
    print(f"\nJSON: {args.json}")


if __name__ == "__main__":
    main()
