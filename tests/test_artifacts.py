"""Atomic writes and the content-addressed cache (hit, miss, key sensitivity, resume)."""

from __future__ import annotations

import hashlib
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
    assert b.summary["n"] == 1 and json.loads((a.dir / "COMPLETE.json").read_text())["files"] == {
        "out.txt": {"size": 1, "sha256": hashlib.sha256(b"x").hexdigest()}}


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


# ----------------------------------------------------------------------------- integrity of cache hits
def _two_file_build(calls):
    def build(d):
        calls.append(d)
        (d / "metrics.json").write_text('{"acc": 0.25}\n')
        (d / "rows.jsonl").write_text('{"i": 1}\n{"i": 2}\n{"i": 3}\n')
        (d / "model").mkdir()
        (d / "model" / "w.bin").write_bytes(bytes(range(200)))
        return {"n": 3}
    return build


def _cut_last_line(p):
    p.write_text("".join(p.read_text().splitlines(keepends=True)[:-1]))


DAMAGE = {  # what a user, a full disk or a bad copy does to a finished entry -> what the warning names
    "edited json": (lambda d: (d / "metrics.json").write_text('{"acc": 0.9}\n'), "metrics.json has 13 bytes, 14"),
    "same-size edit": (lambda d: (d / "metrics.json").write_text('{"acc": 0.75}\n'), "metrics.json was modified"),
    "truncated json": (lambda d: (d / "metrics.json").write_text('{"acc": 0.'), "metrics.json has 10 bytes, 14"),
    "jsonl cut at a line": (lambda d: _cut_last_line(d / "rows.jsonl"), "rows.jsonl has 18 bytes, 27"),
    "deleted file": (lambda d: (d / "rows.jsonl").unlink(), "rows.jsonl is missing"),
    "truncated weights": (lambda d: (d / "model" / "w.bin").write_bytes(bytes(100)), "model/w.bin has 100 bytes, 200"),
    "broken marker": (lambda d: (d / "COMPLETE.json").write_text("{"), "COMPLETE.json is unreadable"),
}


@pytest.mark.parametrize("case", sorted(DAMAGE))
def test_damaged_entry_is_rebuilt_never_served(tmp_path, caplog, case):
    (tmp_path / "run").mkdir()
    ctx = _context(tmp_path)
    calls = []
    first = ctx.cached("step", {"k": 1}, [], _two_file_build(calls))
    damage, named = DAMAGE[case]
    damage(first.dir)
    caplog.set_level("WARNING", logger="sert.pipeline")
    again = ctx.cached("step", {"k": 1}, [], _two_file_build(calls))
    assert len(calls) == 2 and not again.cached
    (warning,) = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert "is damaged" in warning and named in warning and "building it again" in warning
    assert (again.dir / "metrics.json").read_text() == '{"acc": 0.25}\n'
    assert len(read_jsonl(again.dir / "rows.jsonl")) == 3
    assert ctx.cached("step", {"k": 1}, [], _two_file_build(calls)).cached and len(calls) == 2  # whole again


def test_problem_names_the_file_and_the_sizes(tmp_path):
    from sert.artifacts import ArtifactStore

    entry = ArtifactStore(tmp_path).entry("s", "k")
    entry.dir.mkdir(parents=True)
    _two_file_build([])(entry.dir)
    entry.finish({}, {})
    assert entry.problem() is None
    _cut_last_line(entry.dir / "rows.jsonl")
    assert entry.problem() == "rows.jsonl has 18 bytes, 27 when it was written"
    (entry.dir / "rows.jsonl").write_text('{"i": 1}\n{"i": 2}\n{"i": 4}\n')
    assert entry.problem() == "rows.jsonl was modified (same size, different sha256)"
    (entry.dir / "rows.jsonl").write_text('{"i": 1}\n{"i": 2}\n{"i": 3}\n')
    (entry.dir / "model" / "w.bin").unlink()
    assert entry.problem() == "model/w.bin is missing"


def test_large_files_are_checked_by_size_unless_verify_full(tmp_path, monkeypatch):
    """paths.verify=fast hashes files up to CHEAP_HASH_BYTES; a same-size change of a larger file needs full."""
    from sert import artifacts

    entry = artifacts.ArtifactStore(tmp_path).entry("s", "k")
    entry.dir.mkdir(parents=True)
    _two_file_build([])(entry.dir)
    entry.finish({}, {})
    monkeypatch.setattr(artifacts, "CHEAP_HASH_BYTES", 100)  # w.bin (200 bytes) is now a "large" file
    (entry.dir / "model" / "w.bin").write_bytes(bytes(reversed(range(200))))
    assert entry.problem("fast") is None
    assert entry.problem("full") == "model/w.bin was modified (same size, different sha256)"
    (entry.dir / "model" / "w.bin").write_bytes(bytes(199))
    assert entry.problem("fast") == "model/w.bin has 199 bytes, 200 when it was written"


def test_entry_from_before_integrity_records_gets_them(tmp_path):
    from sert.artifacts import ArtifactStore, read_json, write_json

    entry = ArtifactStore(tmp_path).entry("s", "k")
    entry.dir.mkdir(parents=True)
    (entry.dir / "a.txt").write_text("abc")
    write_json(entry.dir / "COMPLETE.json", {"step": "s", "key": "k", "files": ["a.txt"], "summary": {}})
    assert entry.problem() is None
    assert read_json(entry.dir / "COMPLETE.json")["files"] == {
        "a.txt": {"size": 3, "sha256": hashlib.sha256(b"abc").hexdigest()}}
    (entry.dir / "a.txt").write_text("abd")
    assert entry.problem() == "a.txt was modified (same size, different sha256)"
    write_json(entry.dir / "COMPLETE.json", {"step": "s", "key": "k", "files": ["gone.txt"], "summary": {}})
    assert entry.problem() == "gone.txt is missing"


def test_check_file_reads_through_the_entry_record(tmp_path):
    from sert.artifacts import ArtifactStore, check_file

    entry = ArtifactStore(tmp_path / "cache").entry("evaluate", "k")
    entry.dir.mkdir(parents=True)
    _two_file_build([])(entry.dir)
    entry.finish({}, {})
    link = tmp_path / "run" / "evaluate"
    link.parent.mkdir()
    link.symlink_to(entry.dir)
    assert check_file(link / "metrics.json") == link / "metrics.json"
    (entry.dir / "metrics.json").write_text('{"acc": 0.99}\n')
    with pytest.raises(ValueError, match=r"run/evaluate/metrics.json: metrics.json was modified .* is damaged"):
        check_file(link / "metrics.json")
    plain = tmp_path / "plain.json"  # not in a cache entry (a collected study): nothing to check against
    plain.write_text("{}")
    assert check_file(plain) == plain
