"""Training throughput against a plain eager step and the CPU's own matmul peaks, all measured in one run.

    python experiments/bench_train.py                                  # SmolLM2-135M, batch 8, StrategyQA rationales
    python experiments/bench_train.py --model tiny --steps 4 --n 32    # smoke
    python experiments/bench_train.py --fidelity-steps 60             # + final loss of 60 steps vs the fp32 path

Rows (same model weights, same examples, same length-grouped batches of ``--batch-size``, ``--steps`` optimizer
steps each; the precision is bf16 autocast where the CPU has fast bf16, else fp32, unless ``--precision``):

* ``plain eager step``: the loop a user writes first: ``model(**batch).loss`` under autocast, ``backward``,
  clipping, ``torch.optim.AdamW()`` with its defaults; SDPA attention;
* ``sert loop, fast paths off``: ``trainer=loop`` with ``fast_loss=false fused_optimizer=false`` (what sert did
  before these fast paths);
* ``sert loop``: ``trainer=loop`` with its defaults (fused target-only LM head + loss, fused AdamW);
* ``sert sft``: ``trainer=sft`` (transformers' Trainer) with its defaults;
* ``sert loop + compile`` (``--compile``): ``trainer.compile=true``; the compile happens in the first step, whose
  time the table shows.

tok/s counts real (non-padding) tokens over the whole run, first step included; tok per CPU-s divides them by
the process's CPU time instead (steadier than wall time on a shared machine). GFLOP/s is the useful work:
6 x the decoder's parameters per real token + 6 x the LM head's per target token (what the fused path computes;
the plain path also multiplies the prompt and padding rows by the head, which is not counted). Both peaks are
measured in this process before the rows: torch.mm at 4096^3 and at the model's own shapes for a batch's rows
(forward and both backward GEMMs of every linear layer, weighted by their FLOPs; ``benchlib.shape_peak``).
Data: StrategyQA questions with their gold rationale in the SERT training format. Prints a markdown table headed
by the CPU model and flags, and writes the same as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see bench_generate.py

import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("SERT_SHARED_DIR", ROOT.parent / "shared"))
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "experiments"))

from benchlib import large_peak, load_bench_model, machine, shape_peak  # noqa: E402

from sert.data import make_record  # noqa: E402
from sert.models import set_attention  # noqa: E402
from sert.prompts import Prompts  # noqa: E402
from sert.training.data import Example, PadCollator, length_grouped_batches, tokenize_examples  # noqa: E402
from sert.training.loop import LoopTrainer  # noqa: E402
from sert.training.sft import HFTrainer  # noqa: E402

FALLBACK = [{"question": f"Is {i} an even number?", "answer": "Yes" if i % 2 == 0 else "No",
             "rationale": f"{i} divided by two leaves a remainder of {i % 2}. " * 6} for i in range(64)]


def examples(path: Path, n: int) -> list[Example]:
    rows = json.loads(path.read_text())[:n] if path.exists() else (FALLBACK * (n // len(FALLBACK) + 1))[:n]
    p = Prompts()
    return [Example(*p.training_pair("self_train", make_record(r, str(i)), r.get("rationale", "")))
            for i, r in enumerate(rows)]


def plain_eager(model, tok, data, args, precision: str) -> dict:
    """The first loop anyone writes, on sert's batches."""
    set_attention(model, "sdpa")
    rows = tokenize_examples(tok, data, max_length=args.max_length).rows
    collate = PadCollator(tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id)
    lengths = [len(r["input_ids"]) for r in rows]
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.0)
    model.train()
    torch.manual_seed(0)
    batches, step, losses = [], 0, []
    t0, c0 = time.perf_counter(), time.process_time()
    real = 0
    while step < args.steps:
        if not batches:
            batches = length_grouped_batches(lengths, args.batch_size, seed=step)
        batch = collate([rows[i] for i in batches.pop(0)])
        real += int(batch["attention_mask"].sum())
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
        step += 1
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    return {"steps": step, "seconds": seconds, "cpu_seconds": cpu, "real_tokens": real,
            "final_loss": sum(losses[-5:]) / len(losses[-5:])}


def sert_trainer(cls, model, tok, data, args, precision: str, **knobs) -> dict:
    trainer = cls(max_steps=args.steps, batch_size=args.batch_size, max_length=args.max_length, lr=args.lr,
                  save_strategy="no", logging_steps=1, precision=precision, **knobs)
    with tempfile.TemporaryDirectory() as d:
        t0, c0 = time.perf_counter(), time.process_time()
        s = trainer.train(model, tok, data, d, seed=0)
        seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
        history = json.loads((Path(d) / "log_history.json").read_text())
    losses = [h["loss"] for h in history if "loss" in h]
    out = {"steps": s["steps"], "seconds": seconds, "cpu_seconds": cpu, "real_tokens": s["tokens"],
           "final_loss": sum(losses[-5:]) / max(len(losses[-5:]), 1)}
    out["first_step_seconds"] = s.get("first_step_seconds")
    return out


def useful_flops(model, tok, data, args, real_tokens: int, steps: int) -> float:
    """6 x decoder params per real token + 6 x head params per target token, for the tokens these steps saw."""
    head = model.get_output_embeddings().weight.numel()
    embed = model.get_input_embeddings().weight.numel()
    total = sum(p.numel() for p in model.parameters())
    body = total - embed - (0 if model.config.tie_word_embeddings else head)
    rows = tokenize_examples(tok, data, max_length=args.max_length).rows
    share = sum(sum(x != -100 for x in r["labels"][1:]) for r in rows) / sum(len(r["input_ids"]) for r in rows)
    return 6 * body * real_tokens + 6 * head * real_tokens * share


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m", help="smollm2-135m, tiny, tiny-llama, a conf/model name or dir")
    ap.add_argument("--data", default=str(SHARED / "data" / "strategy_qa.json"))
    ap.add_argument("--n", type=int, default=256)
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--max-length", type=int, default=512)
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--precision", default="auto", help="auto (bf16 where fast, else fp32) | bf16 | fp32")
    ap.add_argument("--rows", default="plain,loop_off,loop,sft", help="plain,loop_off,loop,sft,compile")
    ap.add_argument("--compile", action="store_true", help="add the trainer.compile=true row")
    ap.add_argument("--fidelity-steps", type=int, default=0,
                    help="also train this many steps with sert loop (this precision) and the fast-paths-off loop "
                         "in fp32, and compare their final losses")
    ap.add_argument("--json", default=str(ROOT / "outputs" / "bench_train.json"))
    args = ap.parse_args()
    from sert.hardware import bf16_fast

    precision = args.precision if args.precision != "auto" else ("bf16" if bf16_fast("cpu") else "fp32")
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    data = examples(Path(args.data), args.n)
    info = machine()
    model = load_bench_model(args.model)
    tok = load_bench_tokenizer(args.model)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    lengths = [len(r["input_ids"]) for r in tokenize_examples(tok, data, max_length=args.max_length).rows]
    rows_per_batch = args.batch_size * round(sum(lengths) / len(lengths))
    peaks = {"large": large_peak(dtype), "shape": shape_peak(model.config, rows_per_batch, dtype, train=True)}
    print(f"peaks ({precision}): 4096^3 {peaks['large']} GFLOP/s, model shapes at {rows_per_batch} rows "
          f"{peaks['shape']} GFLOP/s", flush=True)
    wanted = args.rows.split(",") + (["compile"] if args.compile else [])
    runs = {
        "plain": ("plain eager step (autocast, AdamW defaults, SDPA)", lambda: plain_eager(model, tok, data, args, precision)),
        "loop_off": ("sert loop, fast paths off", lambda: sert_trainer(LoopTrainer, model, tok, data, args, precision,
                                                                        fast_loss=False, fused_optimizer=False)),
        "loop": ("sert loop", lambda: sert_trainer(LoopTrainer, model, tok, data, args, precision)),
        "sft": ("sert sft (transformers Trainer)", lambda: sert_trainer(HFTrainer, model, tok, data, args, precision)),
        "compile": ("sert loop + compile", lambda: sert_trainer(LoopTrainer, model, tok, data, args, precision,
                                                                compile=True)),
    }
    results = []
    for key in [k for k in runs if k in wanted]:
        model.load_state_dict(state)
        set_attention(model, "sert")
        name, fn = runs[key]
        r = fn()
        flops = useful_flops(model, tok, data, args, r["real_tokens"], r["steps"])
        r.update(row=key, name=name, tokens_per_s=round(r["real_tokens"] / r["seconds"], 1),
                 tokens_per_cpu_s=round(r["real_tokens"] / r["cpu_seconds"], 1),
                 gflops=round(flops / r["seconds"] / 1e9, 1))
        r["share_of_large_peak"] = round(r["gflops"] / peaks["large"], 3)
        r["share_of_shape_peak"] = round(r["gflops"] / peaks["shape"], 3)
        print(json.dumps(r), flush=True)
        results.append(r)
    base = next((r for r in results if r["row"] == "plain"), None)
    for r in results:
        r["vs_plain"] = round(r["tokens_per_s"] / base["tokens_per_s"], 2) if base else None
    fidelity = None
    if args.fidelity_steps:
        a = argparse.Namespace(**{**vars(args), "steps": args.fidelity_steps})
        model.load_state_dict(state)
        ref = sert_trainer(LoopTrainer, model, tok, data, a, "fp32", fast_loss=False, fused_optimizer=False)
        model.load_state_dict(state)
        fast = sert_trainer(LoopTrainer, model, tok, data, a, precision)
        fidelity = {"steps": args.fidelity_steps, "fp32_plain_final_loss": round(ref["final_loss"], 5),
                    f"sert_{precision}_final_loss": round(fast["final_loss"], 5),
                    "relative_difference": round(abs(fast["final_loss"] - ref["final_loss"]) / ref["final_loss"], 5)}
        print(json.dumps(fidelity), flush=True)
    info["load_average_end"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    result = {"machine": info, "model": args.model, "precision": precision, "batch_size": args.batch_size,
              "steps": args.steps, "examples": args.n, "mean_length": round(sum(lengths) / len(lengths), 1),
              "peaks_gflops": peaks, "rows": results, "fidelity": fidelity,
              "command": "python experiments/bench_train.py " + " ".join(sys.argv[1:])}
    result["markdown"] = markdown(result)
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    print(result["markdown"])
    print(f"JSON: {args.json}")


def load_bench_tokenizer(name: str):
    from sert.models import model_spec, tokenizer_for

    if name == "tiny":
        return tokenizer_for({"random_init": {}})
    if name == "tiny-llama":
        raise SystemExit("bench_train needs a tokenizer that matches the model: use tiny or a real model")
    return tokenizer_for(model_spec(name))


def markdown(r: dict) -> str:
    m, p = r["machine"], r["peaks_gflops"]
    lines = [f"CPU: {m['cpu']} ({', '.join(m['flags'])}), {m['threads']} threads, torch {m['torch']}, "
             f"load average {m['load_average']} at start, {m['load_average_end']} at end",
             f"Model {r['model']}, {r['precision']}, batch {r['batch_size']}, {r['steps']} steps, mean example "
             f"{r['mean_length']} tokens; matmul peaks measured in this run: {p['large']} GFLOP/s at 4096^3, "
             f"{p['shape']} GFLOP/s at the model's shapes", "",
             "| trainer | real tok/s | vs plain | useful GFLOP/s | of 4096^3 peak | of shape peak | tok per CPU-s "
             "| final loss |",
             "|---|---|---|---|---|---|---|---|"]
    for x in r["rows"]:
        extra = f" (first step {x['first_step_seconds']:.0f} s, compile included)" if x["row"] == "compile" else ""
        vs = f"{x['vs_plain']:.2f}x" if x["vs_plain"] else "—"
        lines.append(f"| {x['name']}{extra} | {x['tokens_per_s']} | {vs} | {x['gflops']} | "
                     f"{100 * x['share_of_large_peak']:.0f}% | {100 * x['share_of_shape_peak']:.0f}% | "
                     f"{x['tokens_per_cpu_s']} | {x['final_loss']:.4f} |")
    if r["fidelity"]:
        f, prec = r["fidelity"], r["precision"]
        fast = f["sert_" + prec + "_final_loss"]
        lines += ["", f"Fidelity: after {f['steps']} steps, final loss (mean of the last 5 steps) "
                  f"{fast} (sert loop, {prec}) vs "
                  f"{f['fp32_plain_final_loss']} (fast paths off, fp32): {100 * f['relative_difference']:.2f}% apart"]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
