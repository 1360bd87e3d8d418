"""The CLI orients a new user: ``sert --help`` says what sert is and what to run first, every run prints its
run directory (and a sweep its sweep directory) with the ``sert-report`` command to run next, the generation
bar moves while a batch decodes, and third-party notices a user cannot act on are dropped."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

from conftest import ROOT, run_cli, run_dirs

from sert.models import load_model
from sert.sampling import SamplingSpec, sample_batch


def test_help_says_what_sert_is_and_what_to_run_first():
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    out = subprocess.run([sys.executable, "-m", "sert", "--help"], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=120, check=True).stdout
    assert "Self-Enhanced Reasoning Training" in out
    for word in ("finetune", "sert_rd", "generate -> filter -> self_train -> evaluate", "First run",
                 "sert stage=data", "runs/<date>/<time>", "sert-report DIR", "stage: data, distill"):
        assert word in out, word
    assert "powered by Hydra" not in out


def test_a_run_and_a_sweep_print_their_directories(csqa_files, tmp_path: Path):
    data, split = csqa_files
    common = ["stage=data", f"dataset.path={data}", f"dataset.split_file={split}", "logger=none"]
    proc = run_cli(*common, out=tmp_path / "one")
    (run,) = run_dirs(tmp_path / "one")
    lines = proc.stdout.splitlines()
    assert lines[0] == f"run directory: {run}"
    assert f"done: {run} (run.json, the step outputs, cli.log)" in lines
    assert f"next: sert-report {run}   # tables and figures of this run" in proc.stdout
    assert f"run directory: {run}" in (run / "cli.log").read_text()

    proc = run_cli("-m", *common, "dataset.split=train,test", out=tmp_path / "sweep")
    sweep = next((tmp_path / "sweep" / "multiruns").glob("*/*"))
    assert proc.stdout.count("run directory: ") == 2
    assert f"sweep directory: {sweep} (2 jobs)\nnext: sert-report {sweep}" in proc.stdout


def test_the_generation_bar_moves_every_decoding_step():
    model, tok = load_model("tiny", random_init={"n_layer": 1, "n_embd": 16, "n_head": 2, "n_positions": 128,
                                                 "seed": 0}, device="cpu")
    calls: list[int] = []
    spec = SamplingSpec(first_k=2, samples_per_token=3, max_new_tokens=10, stop=())
    prompts = ["Question: a? Answer:", "Question: bb? Answer:"]
    paths = sample_batch(model, tok, prompts, ["a", "b"], spec, seed=0, on_step=calls.append)
    assert sum(calls) == 2 * 6 == sum(len(p) for p in paths)  # every path counted once
    assert len(calls) >= 9  # once per decoding step, not once per batch
    assert sample_batch(model, tok, prompts, ["a", "b"], spec, seed=0) == paths  # the callback changes nothing


def test_third_party_noise_is_dropped_and_the_rest_kept():
    from sert.cli import _DropNoise, quiet_third_party

    quiet_third_party()
    drop = _DropNoise()

    def record(msg: str) -> logging.LogRecord:
        return logging.LogRecord("transformers.x", logging.WARNING, __file__, 0, msg, (), None)

    assert not drop.filter(record("`past_key_values`/`cache_params` are deprecated. Use `cache` instead."))
    assert not drop.filter(record("Loading a GGUF checkpoint with its weights packed is fastest in float32, and ..."))
    assert drop.filter(record("Some weights of the model were not initialized"))
    from transformers.utils import logging as hf_logging

    root = hf_logging._get_library_root_logger()
    assert any(isinstance(f, _DropNoise) for h in root.handlers for f in h.filters)


def test_the_decoding_bar_moves_as_rows_finish():
    """The engine (evaluation, local teacher and judge) reports rows as they finish, not whole batches."""
    from sert.engine import decode, decode_batch

    model, tok = load_model("tiny", random_init={"n_layer": 1, "n_embd": 16, "n_head": 2, "n_positions": 128,
                                                 "seed": 0}, device="cpu")
    rows = [tok("Question: a? Answer:").input_ids, tok("Q: b").input_ids, tok("x").input_ids]
    calls: list[int] = []
    out = decode_batch(model, tok, rows, [2, 5, 8], lambda logits: logits.argmax(-1), on_done=calls.append)
    assert sum(calls) == 3 and len(calls) >= 2  # the 2-token row finishes first
    assert out == decode_batch(model, tok, rows, [2, 5, 8], lambda logits: logits.argmax(-1))
    assert len(decode(model, tok, ["Question: a? Answer:", "Q: b", "x"], max_new_tokens=4, batch_size=2)) == 3
