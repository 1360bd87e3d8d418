"""Atomic writes and the content-addressed cache (hit, miss, key sensitivity, resume)."""

from __future__ import annotations

import json
import os

import pytest

from conftest import compose, run_cli, run_dirs
from sert.artifacts import atomic_path, read_jsonl, read_jsonl_tolerant, stable_hash, write_jsonl


def test_atomic_write_leaves_no_half_file(tmp_path):
    target = tmp_path / "x.jsonl"
    write_jsonl(target, [{"a": 1}])
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed")
    assert read_jsonl(target) == [{"a": 1}]
    assert os.listdir(tmp_path) == ["x.jsonl"]


def test_stable_hash_ignores_key_order():
    assert stable_hash({"a": 1, "b": [1, 2]}) == stable_hash({"b": [1, 2], "a": 1})
    assert stable_hash({"a": 1}) != stable_hash({"a": 2})


def test_tolerant_reader_skips_torn_line(tmp_path):
    p = tmp_path / "log.jsonl"
    p.write_text('{"a": 1}\n{"a": 2')
    assert read_jsonl_tolerant(p) == [{"a": 1}]
    with pytest.raises(ValueError, match="log.jsonl:2"):
        read_jsonl(p)


def _context(tmp_path, *overrides):
    from sert.pipeline import Context

    cfg = compose(*overrides, f"paths.cache_dir={tmp_path / 'cache'}")
    return Context(cfg, tmp_path / "run")


def test_cache_hit_miss_and_key_sensitivity(tmp_path):
    (tmp_path / "run").mkdir()
    ctx = _context(tmp_path)
    calls = []

    def build(d):
        calls.append(d)
        (d / "out.txt").write_text("x")
        return {"n": 1}

    a = ctx.cached("step", {"k": 1}, [], build)
    b = ctx.cached("step", {"k": 1}, [], build)
    c = ctx.cached("step", {"k": 2}, [], build)
    assert len(calls) == 2 and not a.cached and b.cached and a.key == b.key != c.key
    assert b.summary["n"] == 1 and json.loads((a.dir / "COMPLETE.json").read_text())["files"] == ["out.txt"]


def test_killed_build_is_not_trusted_and_resumes_in_place(tmp_path):
    (tmp_path / "run").mkdir()
    ctx = _context(tmp_path)

    def crash(d):
        (d / "partial.txt").write_text("half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        ctx.cached("step", {"k": 1}, [], crash)
    seen = []
    out = ctx.cached("step", {"k": 1}, [], lambda d: seen.append((d / "partial.txt").read_text()) or {})
    assert seen == ["half"] and not out.cached


def test_data_key_follows_content_not_irrelevant_knobs(tmp_path, csqa_files):
    data, split = csqa_files
    base = [f"dataset.path={data}", f"dataset.split_file={split}"]
    (tmp_path / "run").mkdir()
    k1 = _context(tmp_path, *base).dataset().key
    k2 = _context(tmp_path, *base, "seed=7", "model=gpt2-large").dataset().key  # irrelevant to data
    k3 = _context(tmp_path, *base, "dataset.limit=2").dataset().key  # relevant
    assert k1 == k2 != k3


def test_stage_data_cli_writes_split_manifest_and_reuses_cache(tmp_path, csqa_files):
    data, split = csqa_files
    args = ["stage=data", f"dataset.path={data}", f"dataset.split_file={split}", "dataset.split=train"]
    first = run_cli(*args, out=tmp_path / "out")
    assert "commonsense_qa/train: 3 records" in first.stdout
    second = run_cli(*args, out=tmp_path / "out")
    assert "cache hit" in second.stderr + second.stdout
    runs = run_dirs(tmp_path / "out")
    assert len(runs) == 2
    manifest = json.loads((runs[-1] / "run.json").read_text())
    assert manifest["stage"] == "data" and manifest["steps"][0]["cached"] is True
    assert manifest["data"]["train"]["records"] == 3 and manifest["versions"]["torch"]
    assert manifest["config"]["dataset"]["path"] == str(data)
    rows = read_jsonl(runs[-1] / "data" / "train.jsonl")
    assert [r["answer"] for r in rows] == ["B", "C", "A"]


def test_read_json_names_the_file(tmp_path):
    from sert.artifacts import read_json

    path = tmp_path / "COMPLETE.json"
    path.write_text('{"step": "x",\n "key": ')
    with pytest.raises(ValueError, match=rf"^{path}:2:9: not valid JSON .* truncated"):
        read_json(path)


@pytest.mark.parametrize("umask,mode", [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_atomic_writes_respect_the_umask(tmp_path, umask, mode):
    """Cache files used to be 0600 (mkstemp) whatever the umask: a shared cache_dir was unreadable."""
    from sert.artifacts import write_json

    old = os.umask(umask)
    try:
        write_json(tmp_path / "a.json", {"x": 1})
        write_jsonl(tmp_path / "b.jsonl", [{"x": 1}])
    finally:
        os.umask(old)
    assert {oct(os.stat(tmp_path / n).st_mode & 0o777) for n in ("a.json", "b.jsonl")} == {oct(mode)}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "b.jsonl"]  # no temp file left


def test_resuming_is_logged_only_when_there_is_something_to_resume(tmp_path, caplog):
    (tmp_path / "run").mkdir()
    ctx = _context(tmp_path)
    entry = ctx.store.entry("step", "k")

    def build(d):
        return {}

    import logging

    from sert.artifacts import stable_hash as h

    key = h({"step": "step", "material": {"k": 1}, "inputs": []})
    empty = ctx.store.entry("step", key).dir
    (empty / ".candidates.jsonl.abc.tmp").parent.mkdir(parents=True)
    (empty / ".candidates.jsonl.abc.tmp").write_text("half")  # only a torn temp file: nothing to resume
    with caplog.at_level(logging.INFO, logger="sert.pipeline"):
        ctx.cached("step", {"k": 1}, [], build)
        key2 = h({"step": "step", "material": {"k": 2}, "inputs": []})
        (ctx.store.entry("step", key2).dir / "checkpoints").mkdir(parents=True)
        (ctx.store.entry("step", key2).dir / "checkpoints" / "state.pt").write_text("x")
        ctx.cached("step", {"k": 2}, [], build)
    msgs = [r.getMessage() for r in caplog.records if r.name == "sert.pipeline"]
    assert msgs == [f"[step] computing into {empty}",
                    f"[step] resuming in {ctx.store.entry('step', key2).dir} (1 files from an interrupted run)"]
    assert entry.partial_files() == []
