"""Peak disk of a training step's cache entry (checkpoints + final model) relative to the model size.

Runs the real CLI (``stage=finetune`` limited to the training step) and samples the size of the
training cache entry every ``--interval`` seconds while it runs; reports the peak and the size of the
saved model (``model/model.safetensors``), for ``trainer.checkpoint_optimizer=true`` (exact resume: the
checkpoints hold Adam's two moments) and ``false`` (weights only).

    python experiments/checkpoint_disk.py                      # SmolLM2-135M, 16 examples, 2 epochs
    python experiments/checkpoint_disk.py --model tiny --epochs 3
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("SERT_SHARED_DIR", ROOT.parent / "shared"))


def disk_bytes(root: Path) -> int:
    total = 0
    for d, _, files in os.walk(root):
        for f in files:
            try:
                total += os.lstat(os.path.join(d, f)).st_blocks * 512
            except FileNotFoundError:  # deleted while walking
                pass
    return total


def measure(args, checkpoint_optimizer: bool) -> dict:
    with tempfile.TemporaryDirectory() as out:
        cmd = [sys.executable, "-m", "sert", "stage=finetune", "stage.steps=[finetune]", f"model={args.model}",
               "device=cpu", "logger=none", f"dataset.path={args.data}",
               f"dataset.split_file={Path(args.data).with_suffix('.split.json')}", f"dataset.limit={args.n}",
               f"trainer.epochs={args.epochs}", f"trainer.max_length={args.max_length}",
               f"trainer.checkpoint_optimizer={str(checkpoint_optimizer).lower()}"]
        env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "SERT_OUTPUT_DIR": out}
        start, peak = time.perf_counter(), 0
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        cache = Path(out) / "cache" / "finetune"
        while proc.poll() is None:
            if cache.exists():
                peak = max(peak, disk_bytes(cache))
            time.sleep(args.interval)
        if proc.returncode != 0:
            raise SystemExit(f"sert failed ({proc.returncode}):\n{proc.stderr.read()[-3000:]}")
        (entry,) = (p for p in cache.iterdir() if p.is_dir())
        model = (entry / "model" / "model.safetensors").stat().st_blocks * 512
        return {"checkpoint_optimizer": checkpoint_optimizer, "peak_bytes": peak, "model_bytes": model,
                "final_bytes": disk_bytes(entry), "peak_over_model": round(peak / model, 2),
                "wall_s": round(time.perf_counter() - start, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--data", default=str(SHARED / "data" / "commonsense_qa.json"))
    ap.add_argument("--n", type=int, default=16)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--interval", type=float, default=0.05)
    args = ap.parse_args()
    rows = [measure(args, True), measure(args, False)]
    mib = 2 ** 20
    print(f"model {args.model}, {args.n} examples, {args.epochs} epochs, max_length {args.max_length}, "
          f"sampled every {args.interval}s; load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}\n")
    print("| checkpoint_optimizer | model MiB | peak entry MiB | peak / model | after the run MiB |\n|---|---|---|---|---|")
    for r in rows:
        print(f"| {str(r['checkpoint_optimizer']).lower()} | {r['model_bytes'] / mib:.0f} | {r['peak_bytes'] / mib:.0f} | "
              f"{r['peak_over_model']}x | {r['final_bytes'] / mib:.0f} |")
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
