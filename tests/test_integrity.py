"""A damaged cache entry is never served, through the real CLI on the tiny model: one per artifact type
(jsonl, json, safetensors weights, a kept training checkpoint, a deleted file). One SERT
run fills a cache; each case damages a copy of it and reruns the same command."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from conftest import CSQA_ROWS, run_cli, run_dirs

from sert.artifacts import ArtifactStore, file_hash


def _args(data: Path) -> list[str]:
    return ["stage=sert", "model=tiny", "device=cpu", "logger=none", f"dataset.path={data}",
            f"dataset.split_file={data.with_suffix('.split.json')}",
            "generation.max_new_tokens=30", "generation.batch_size=3", "filter.length.min_tokens=10",
            "filter.perplexity.min_ppl=0", "filter.rep2.max_rate=1.0",  # a random model: keep some paths
            "trainer.max_steps=2", "trainer.batch_size=2", "trainer.save_strategy=steps", "trainer.save_steps=1",
            "trainer.keep_checkpoints=true", "evaluate.max_new_tokens=8"]


@pytest.fixture(scope="module")
def filled(tmp_path_factory) -> tuple[Path, list[str], dict]:
    """(a cache filled by one ``stage=sert`` run, its command, {step: entry dir relative to the cache})."""
    root = tmp_path_factory.mktemp("integrity")
    data = root / "csqa.json"
    data.write_text(json.dumps(CSQA_ROWS))
    data.with_suffix(".split.json").write_text(json.dumps({"train": [0, 1, 2], "test": [3]}))
    out = root / "out"
    run_cli(*_args(data), out=out)
    steps = {s["step"]: Path(s["dir"]).relative_to(out / "cache")
             for s in json.loads((run_dirs(out)[0] / "run.json").read_text())["steps"]}
    return out / "cache", _args(data), steps


def _cut_last_line(p: Path) -> None:
    p.write_text("".join(p.read_text().splitlines(keepends=True)[:-1]))


def _tamper_first_row(p: Path) -> None:
    lines = p.read_text().splitlines(keepends=True)
    row = json.loads(lines[0])
    row["text"] = row["text"][::-1]  # same length, other content
    p.write_text(json.dumps(row, ensure_ascii=False) + "\n" + "".join(lines[1:]))


def _edit_acc(p: Path) -> None:
    m = json.loads(p.read_text())
    p.write_text(json.dumps({**m, "acc": 1.0}, indent=2) + "\n")


def _truncate(p: Path) -> None:
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])


def _checkpoint_file(entry: Path) -> Path:
    (ckpt,) = sorted((entry / "checkpoints").glob("checkpoint-*"))
    return ckpt / "model.safetensors"


CASES = {  # case -> (step, file in its entry, damage, what the warning says)
    "jsonl cut at a line": ("generate", "candidates.jsonl", _cut_last_line, "candidates.jsonl has"),
    "jsonl deleted": ("generate", "candidates.jsonl", Path.unlink, "candidates.jsonl is missing"),
    "selected tampered": ("filter", "selected.jsonl", _tamper_first_row, "selected.jsonl"),
    "json edited": ("evaluate", "metrics.json", _edit_acc, "metrics.json"),
    "safetensors truncated": ("self_train", "model/model.safetensors", _truncate, "model/model.safetensors has"),
    "checkpoint truncated": ("self_train", None, _truncate, "/model.safetensors has"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_damaged_entry_is_rebuilt(tmp_path, filled, case):
    cache, args, steps = filled
    out = tmp_path / "out"
    shutil.copytree(cache, out / "cache", symlinks=True)
    step, name, damage, says = CASES[case]
    entry = out / "cache" / steps[step]
    target = entry / name if name else _checkpoint_file(entry)
    original = file_hash(target, None)
    damage(target)
    proc = run_cli(*args, out=out, env={"HYDRA_FULL_ERROR": "0"})
    log = proc.stdout + proc.stderr
    (warning,) = [line for line in log.splitlines() if "is damaged" in line]
    assert f"[{step}] cache entry {entry} is damaged (" in warning and says in warning
    assert "Traceback" not in log
    ran = {s["step"]: s for s in json.loads((run_dirs(out)[0] / "run.json").read_text())["steps"]}
    # only the damaged entry is rebuilt (same key: the steps after it are still cache hits)
    assert [k for k, s in ran.items() if not s["cached"]] == [step]
    assert ArtifactStore(out / "cache").entry(*steps[step].parts).problem("full") is None
    if step != "self_train":  # generation, filtering, evaluation: the same bytes again
        assert file_hash(target, None) == original
