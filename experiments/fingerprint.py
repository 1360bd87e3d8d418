"""Fingerprint of a fixed-seed tiny run: the sha256 of every artifact the pipeline writes.

A refactoring that claims "behaviour unchanged" proves it here: run this before and after,
and the two fingerprints must be equal (same steps, same cache keys, byte-identical artifacts).

    python experiments/fingerprint.py --save before.json          # on the old commit
    python experiments/fingerprint.py --compare before.json       # on the new one: exit 1 on any difference

It runs the real CLI (``python -m sert``) on the tiny random model with its own tiny CommonsenseQA data:
stages sert, sert_rd, rd (teacher rationales from a file), finetune, a raw-sampling generation and the
local judge. JSON files are compared without the fields that measure time or name machine paths
(``VOLATILE``); everything else, JSONL and weights included, byte for byte.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ROWS = [
    ("Where do you keep milk cold? Answer choices: (A) oven, (B) fridge, (C) shelf, (D) car, (E) bag.", "B"),
    ("What do birds use to fly? Answer choices: (A) fins, (B) wheels, (C) wings, (D) roots, (E) legs.", "C"),
    ("Where does the sun rise? Answer choices: (A) east, (B) west, (C) north, (D) south, (E) down.", "A"),
    ("What melts ice? Answer choices: (A) cold, (B) dark, (C) wind, (D) heat, (E) salt water.", "D"),
    ("What do you use to cut paper? Answer choices: (A) spoon, (B) scissors, (C) cup, (D) sock, (E) hat.", "B"),
]
# JSON keys whose values are wall-clock measurements, timestamps, absolute paths or library version stamps
# (transformers writes its own version into every saved config.json / generation_config.json: a patch release
# of transformers must not count as a behaviour change; the lock file pins it anyway, see docs/install.md)
VOLATILE = {"transformers_version", "seconds", "wall_seconds", "tok_per_s", "tokens_per_second", "started", "finished", "created",
            "dir", "path", "source", "train_runtime", "train_samples_per_second", "train_steps_per_second",
            "elapsed", "samples_per_second", "steps_per_second", "time", "timestamp", "load_seconds"}


def make_inputs(d: Path) -> list[str]:
    data, split, teacher = d / "csqa.json", d / "csqa.split.json", d / "teacher.jsonl"
    data.write_text(json.dumps([{"question": q, "answer": a} for q, a in ROWS]))
    split.write_text(json.dumps({"train": [0, 1, 2, 3], "test": [4]}))
    teacher.write_text("".join(json.dumps({"qid": f"csqa-{i}", "completion": f"Because it is so. Therefore, the answer is ({a})."}) + "\n"
                               for i, (_, a) in enumerate(ROWS[:4])))
    return ["model=tiny", "device=cpu", "seed=0", "logger=none", f"dataset.path={data}", f"dataset.split_file={split}",
            "generation.max_new_tokens=30", "generation.batch_size=2", "filter.length.min_tokens=10",
            "filter.perplexity.min_ppl=0", "filter.rep2.max_rate=1.0", "trainer.max_steps=2", "trainer.batch_size=2",
            "trainer.save_strategy=no", "evaluate.max_new_tokens=8", "evaluate.label_only_max_new_tokens=4",
            f"teacher.input={teacher}"]


RUNS = [
    ["stage=sert"],
    ["stage=sert_rd"],
    ["stage=rd"],
    ["stage=finetune"],
    ["stage=generate", "generation.mode=raw"],
    ["stage=judge", "judge=local", "judge.model=null", "judge.max_tokens=8", "judge.limit=3"],
]


def run_all(work: Path) -> None:
    common = make_inputs(work)
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "SERT_OUTPUT_DIR": str(work / "out"),
           "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1", "HYDRA_FULL_ERROR": "1"}
    for extra in RUNS:
        proc = subprocess.run([sys.executable, "-m", "sert", *common, *extra], cwd=ROOT, env=env,
                              capture_output=True, text=True)
        if proc.returncode:
            sys.exit(f"fingerprint: {' '.join(extra)} failed:\n{proc.stderr[-3000:]}")


def _volatile(key: str) -> bool:
    return key in VOLATILE or key.endswith(("_seconds", "_per_s", "per_second"))


def _scrub(obj):
    if isinstance(obj, dict):
        return {k: _scrub(v) for k, v in obj.items() if not _volatile(k)}
    if isinstance(obj, list):
        return [_scrub(v) for v in obj]
    return obj


def digest(path: Path, work: Path) -> str:
    data = path.read_bytes()
    if path.suffix in {".json", ".jsonl"}:  # the run's own directory is named as <work>
        data = data.replace(str(work).encode(), b"<work>")
    if path.suffix == ".json":
        data = json.dumps(_scrub(json.loads(data)), sort_keys=True).encode()
    return hashlib.sha256(data).hexdigest()[:16]


def fingerprint(work: Path) -> dict[str, str]:
    """<step>/<cache key>/<file> -> digest, for every artifact in the shared cache (locks and markers aside)."""
    cache = work / "out" / "cache"
    out = {}
    for p in sorted(cache.rglob("*")):
        if p.is_file() and not p.name.startswith(".") and p.suffix not in {".lock", ".log"}:
            out[str(p.relative_to(cache))] = digest(p, work)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--save", type=Path, help="write the fingerprint here")
    ap.add_argument("--compare", type=Path, help="compare with a saved fingerprint; exit 1 if they differ")
    ap.add_argument("--keep", type=Path, help="run in this directory (kept) instead of a temporary one")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = args.keep or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        run_all(work)
        fp = fingerprint(work)
    print(f"{len(fp)} artifacts")
    if args.save:
        args.save.write_text(json.dumps(fp, indent=1, sort_keys=True) + "\n")
    if args.compare:
        old = json.loads(args.compare.read_text())
        diff = sorted(k for k in old.keys() | fp.keys() if old.get(k) != fp.get(k))
        for k in diff:
            print(f"  differs: {k}  {old.get(k)} -> {fp.get(k)}")
        print("identical" if not diff else f"{len(diff)} of {len(old.keys() | fp.keys())} artifacts differ")
        sys.exit(1 if diff else 0)


if __name__ == "__main__":
    main()
