"""sert.portable: machine paths in committed or uploaded records become placeholders (hand-written examples)."""

import sys

from sert.portable import machine_roots, portable


def test_portable_rewrites_whole_path_components_only():
    roots = [("/work/runs/study/cache", "<cache>"), ("/work/runs/study", "<output>"), ("/home/ann", "~")]
    tree = {"dir": "/work/runs/study/cache/llm/x.jsonl", "args": ["hydra.run.dir=/work/runs/study/cell/job"],
            "home": "/home/ann", "other_user": "/home/anna/x", "n": 3, "none": None,
            "text": "cache at /work/runs/study/cache, runs in /work/runs/study; /work/runs/study.old stays"}
    assert portable(tree, roots) == {
        "dir": "<cache>/llm/x.jsonl", "args": ["hydra.run.dir=<output>/cell/job"], "home": "~",
        "other_user": "/home/anna/x", "n": 3, "none": None, "text": "cache at <cache>, runs in <output>; /work/runs/study.old stays"}


def test_machine_roots_longest_first_and_relative_paths_ignored():
    roots = machine_roots({"output_dir": "/data/out", "cache_dir": "/data/out/cache", "shared_dir": "../shared"})
    prefixes = [p for p, _ in roots]
    assert prefixes == sorted(prefixes, key=len, reverse=True)
    named = dict(roots)
    assert named["/data/out/cache"] == "<cache>" and named["/data/out"] == "<output>" and "../shared" not in named
    assert named[sys.prefix] == "<python>"
    assert portable("/data/out/cache/teacher/ab", roots) == "<cache>/teacher/ab"
