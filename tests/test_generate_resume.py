"""A killed stage=generate resumes from whole batches only and ends byte-identical to an uninterrupted run."""

from __future__ import annotations

import json

import pytest
from conftest import CSQA_ROWS, run_cli, run_dirs

from sert.generate import load_parts, write_part


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("data")
    (d / "csqa.json").write_text(json.dumps(CSQA_ROWS))
    (d / "split.json").write_text(json.dumps({"train": [0, 1, 2], "test": [3]}))
    return d / "csqa.json", d / "split.json"


def _common(files) -> list[str]:
    data, split = files
    return ["stage=generate", "model=tiny", f"dataset.path={data}", f"dataset.split_file={split}",
            "generation.max_new_tokens=8", "generation.batch_size=1", "generation.stop=[]"]


def _candidates(out):
    run = run_dirs(out)[-1]
    steps = {s["step"]: s for s in json.loads((run / "run.json").read_text())["steps"]}
    return (run / "generate" / "candidates.jsonl").read_bytes(), steps["generate"]


@pytest.fixture(scope="module")
def reference(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("clean")
    p = run_cli(*_common(data), out=out)
    assert "resuming generation" not in p.stdout + p.stderr  # nothing to resume: the log does not say so
    return _candidates(out)


@pytest.mark.parametrize("kill_at, resumed", [("generate.batch_saved:2", 2), ("generate.step:10", 1)])
def test_killed_generation_resumes_to_identical_candidates(data, tmp_path, reference, kill_at, resumed):
    out = tmp_path / "killed"
    p = run_cli(*_common(data), out=out, check=False, env={"SERT_KILL_AT": kill_at})
    assert p.returncode == -9, p.stderr[-2000:]
    p = run_cli(*_common(data), out=out)
    assert f"resuming generation after {resumed}/3 questions" in p.stdout + p.stderr
    data, step = _candidates(out)
    assert data == reference[0]  # byte-identical to the uninterrupted run
    assert step["key"] == reference[1]["key"] and step["summary"]["resumed_questions"] == resumed
    assert len(data.decode().splitlines()) == 75
    assert not list((out / "cache").rglob("part-*.jsonl"))  # parts removed once candidates.jsonl is written


def test_load_parts_keeps_only_complete_questions(tmp_path):
    parts = tmp_path / "parts"
    write_part(parts / "part-000000.jsonl", [{"qid": "a", "sample": i} for i in range(3)])
    write_part(parts / "part-000001.jsonl", [{"qid": "b", "sample": i} for i in range(2)])  # short: dropped
    (parts / "part-000002.jsonl").write_text('{"qid": "c", "sample": 0}\n{"qid": "c", "sa')  # torn: ignored
    (parts / ".part-000003.jsonl.tmp").write_text('{"qid": "d"}\n')  # a write cut by a kill: ignored
    done = load_parts(parts, 3)
    assert list(done) == ["a"] and [r["sample"] for r in done["a"]] == [0, 1, 2]
    assert load_parts(tmp_path / "missing", 3) == {}
