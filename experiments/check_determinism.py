#!/usr/bin/env python
"""Is CPU training bitwise reproducible? Train the tiny model in N fresh processes, count distinct results.

    python experiments/check_determinism.py --runs 8 --precision bf16 --threads 2
    python experiments/check_determinism.py --runs 8 --precision bf16 --threads 1
    python experiments/check_determinism.py --runs 16 --precision bf16 --threads 2 --perturb-alignment

Each run is its own process (fresh allocator state and thread pool). It trains the 1-layer tiny GPT-2 for 9
steps with ``trainer=loop`` (3 examples, batch 1, 3 epochs, seed 7; the kill tests' setting) and prints the
final loss and a hash of the weights. The summary line says how many distinct weight hashes the runs gave.
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TINY = {"n_layer": 1, "n_embd": 16, "n_head": 2, "n_positions": 256, "seed": 0}


def train_once(precision: str, perturb: bool) -> str:
    """One training in this process: '<train_loss> <weights sha256[:12]>'. ``perturb``: allocate a few
    tensors of random sizes first, so the training's buffers land at other addresses (alignments)."""
    import torch

    from sert.models import load_model
    from sert.training.data import Example
    from sert.training.loop import LoopTrainer

    examples = [Example(f"Question: what is {i} plus one? Answer:", f" {i} and one. So the answer is {i + 1}.")
                for i in range(3)]
    held = [torch.empty(int.from_bytes(os.urandom(2), "little") + 1) for _ in range(5)] if perturb else []
    model, tok = load_model("tiny", random_init=TINY, device="cpu")
    trainer = LoopTrainer(epochs=3, batch_size=1, logging_steps=1, precision=precision, save_strategy="no")
    with tempfile.TemporaryDirectory() as d:
        summary = trainer.train(model, tok, examples, Path(d), seed=7)
    digest = hashlib.sha256(b"".join(p.detach().float().numpy().tobytes() for p in model.parameters()))
    del held
    return f"{summary['train_loss']} {digest.hexdigest()[:12]}"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=8)
    p.add_argument("--precision", default="bf16", choices=["fp32", "bf16"])
    p.add_argument("--threads", type=int, default=2, help="OMP_NUM_THREADS of each run")
    p.add_argument("--perturb-alignment", action="store_true",
                   help="each run first allocates tensors of random sizes (other buffer addresses)")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(train_once(args.precision, args.perturb_alignment))
        return 0
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": str(args.threads)}
    results = collections.Counter()
    for i in range(args.runs):
        cmd = [sys.executable, __file__, "--child", "--precision", args.precision,
               *(["--perturb-alignment"] if args.perturb_alignment else [])]
        out = subprocess.run(cmd, env=env,
                             capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
        print(f"run {i + 1}/{args.runs}: loss {out}", flush=True)
        results[out] += 1
    print(f"{args.precision}, {args.threads} thread(s), {args.runs} processes"
          f"{' (alignment perturbed)' if args.perturb_alignment else ''}: {len(results)} distinct result(s) "
          + ", ".join(f"{k} x{v}" for k, v in results.most_common()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
