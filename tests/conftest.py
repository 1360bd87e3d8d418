"""Shared test helpers: tiny data written on the fly, config composition, and the real CLI in a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("SERT_SHARED_DIR", ROOT.parent / "shared"))

CSQA_ROWS = [
    {"question": "Where do you keep milk cold? Answer choices: (A) oven, (B) fridge, (C) shelf, (D) car, (E) bag.", "answer": "B"},
    {"question": "What do birds use to fly? Answer choices: (A) fins, (B) wheels, (C) wings, (D) roots, (E) legs.", "answer": "C"},
    {"question": "Where does the sun rise? Answer choices: (A) east, (B) west, (C) north, (D) south, (E) down.", "answer": "A"},
    {"question": "What melts ice? Answer choices: (A) cold, (B) dark, (C) wind, (D) heat, (E) salt water.", "answer": "D"},
]
SQA_ROWS = [
    {"question": "Can a fish climb a tree?", "answer": "No"},
    {"question": "Is water wet?", "answer": "Yes"},
    {"question": "Do cats bark?", "answer": False},
    {"question": "Is the sun a star?", "answer": True},
]


@pytest.fixture
def csqa_files(tmp_path: Path) -> tuple[Path, Path]:
    """A tiny unified-format CommonsenseQA file and its split file (3 train, 1 test)."""
    data, split = tmp_path / "csqa.json", tmp_path / "csqa.split.json"
    data.write_text(json.dumps(CSQA_ROWS))
    split.write_text(json.dumps({"train": [0, 1, 2], "test": [3]}))
    return data, split


@pytest.fixture
def sqa_jsonl(tmp_path: Path) -> Path:
    path = tmp_path / "sqa.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in SQA_ROWS))
    return path


def compose(*overrides: str):
    """Compose the real config (as `sert` would) without running anything."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from sert.cli import CONF_DIR

    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return hydra_compose(config_name="config", overrides=list(overrides), return_hydra_config=False)


# The CLI runs on one thread in tests: many of them compare two processes' artifacts bit for bit (kill and
# resume), and multi-threaded bf16 on an AMX CPU is not bitwise reproducible across processes (README
# "Training resume"; experiments/check_determinism.py). A test may pass its own OMP_NUM_THREADS in ``env``.
ONE_THREAD = {"OMP_NUM_THREADS": "1"}
if os.environ.get("PYTEST_XDIST_WORKER"):  # pytest -n N: N workers share the cores, one torch thread each
    torch.set_num_threads(1)


@pytest.fixture
def one_torch_thread():
    """torch on one intra-op thread for the test (deterministic CPU kernels), restored afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def run_cli(*overrides: str, out: Path, check: bool = True, timeout: int = 600, env: dict | None = None):
    """Run the real `sert` CLI (python -m sert) with outputs and cache under ``out``."""
    full_env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "SERT_OUTPUT_DIR": str(out),
                "WANDB_MODE": "disabled", "HYDRA_FULL_ERROR": "1", **ONE_THREAD, **(env or {})}
    proc = subprocess.run([sys.executable, "-m", "sert", *overrides], cwd=ROOT, env=full_env,
                          capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"sert {' '.join(overrides)} failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}")
    return proc


def run_dirs(out: Path) -> list[Path]:
    return sorted(p.parent for p in (out / "runs").rglob("run.json"))
