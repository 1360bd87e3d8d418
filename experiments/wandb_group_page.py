#!/usr/bin/env python
"""Render what the W&B project page of a sweep shows, from the offline run files alone (no upload, no network).

    python experiments/wandb_group_page.py DIR [DIR ...] [-o page.html]

Reads every offline run under each DIR (``offline-run-*/run-*.wandb``; a run resumed in several processes counts
once, as its latest part) and writes one HTML page per W&B group: the runs table with its state, the config
columns to group by and the main metrics, the failed runs' errors, and the report run's tables and figures
(as ``sert-report DIR --wandb`` logged them). docs/wandb.md shows such a page.
"""

from __future__ import annotations

import argparse
import html
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from wandb_offline import read_offline_runs  # noqa: E402

COLUMNS = ["method", "model_name", "dataset_name", "seed", "filter_preset", "filters", "trainer_name",
           "dtype_generate", "dtype_train", "dtype_evaluate"]
TABLES = ["table2", "lenient", "seed_by_seed", "paired_differences", "funnel", "failed_runs", "cells_not_finished"]
METRICS = ["eval/acc", "eval/fmt", "eval/len", "eval/rep", "eval/n", "filter/selected"]
CSS = ("body{font-family:sans-serif;margin:2em;max-width:110em}table{border-collapse:collapse;margin:.5em 0 1.5em}"
       "td,th{border:1px solid #ccc;padding:3px 7px;font-size:13px;text-align:left}th{background:#f3f3f3}"
       ".failed{background:#fde2e2}.running{background:#fff4d6}img{max-width:48em;display:block;margin:.5em 0}")


def state(run: dict) -> str:
    """W&B's run state: finished (exit code 0), failed (non-zero), running/crashed (no exit record: killed)."""
    code = run["exit_code"]
    return "running/crashed" if code is None else "finished" if code == 0 else "failed"


def table(header: list[str], rows: list[list], classes: list[str] | None = None) -> str:
    cell = lambda v: html.escape("" if v is None else f"{v:.4g}" if isinstance(v, float) else str(v))  # noqa: E731
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join(f"<tr class=\"{c}\">" + "".join(f"<td>{cell(v)}</td>" for v in row) + "</tr>"
                   for row, c in zip(rows, classes or [""] * len(rows)))
    return f"<table><tr>{head}</tr>{body}</table>"


def group_page(group: str, runs: list[dict], out: Path) -> str:
    jobs = sorted((r for r in runs if r["run"]["job_type"] != "report"), key=lambda r: r["run"]["name"])
    counted = (f"{len(jobs)} job runs ({', '.join(f'{n} {s}' for s, n in _count(jobs))})"
               f"{' and a report run' if len(jobs) < len(runs) else ''}" if jobs else
               "Only a report run (no job runs under this directory)")
    parts = [f"<h1>W&amp;B group <code>{html.escape(group)}</code></h1>",
             f"<p>{counted}. Rendered from the offline run files by experiments/wandb_group_page.py.</p>"]
    if jobs:
        parts.append("<h2>Runs table</h2>")
    rows = [[r["run"]["name"], r["run"]["job_type"], state(r), *[r["config"].get(c) for c in COLUMNS],
             *[r["summary"].get(m) for m in METRICS], " ".join(r["run"]["tags"])] for r in jobs]
    if jobs:
        parts.append(table(["Name", "Job type", "State", *COLUMNS, *METRICS, "Tags"], rows,
                           [state(r).split("/")[0] for r in jobs]))
    failed = [r for r in jobs if state(r) != "finished"]
    if failed:
        parts.append("<h2>Failed runs (summary)</h2>")
        parts.append(table(["Name", "seed", "status", "error/type", "error/step", "error/message"],
                           [[r["run"]["name"], r["config"].get("seed"), r["summary"].get("status"),
                             r["summary"].get("error/type"), r["summary"].get("error/step"),
                             r["summary"].get("error/message")] for r in failed], ["failed"] * len(failed)))
    for report in (r for r in runs if r["run"]["job_type"] == "report"):
        parts.append(f"<h2>Report run <code>{html.escape(report['run']['name'])}</code></h2>")
        for key, t in sorted(report["tables"].items(), key=lambda kv: _table_rank(kv[0])):
            parts += [f"<h3><code>{html.escape(key)}</code></h3>", table(t["columns"], t["data"])]
        for key, path in report["images"].items():
            parts.append(f"<h3><code>{html.escape(key)}</code></h3><img alt=\"{html.escape(key)}\" "
                         f"src=\"{html.escape(_relative(path, out))}\">")
    return "\n".join(parts)


def _table_rank(key: str) -> int:
    name = key.split("/")[-1]
    return TABLES.index(name) if name in TABLES else len(TABLES)


def _count(runs: list[dict]) -> list[tuple[str, int]]:
    counts: dict[str, int] = defaultdict(int)
    for r in runs:
        counts[state(r)] += 1
    return sorted(counts.items())


def _relative(path: Path, out: Path) -> str:
    import os

    return os.path.relpath(path.resolve(), out.parent.resolve())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("dirs", nargs="+", help="directories holding offline W&B runs (a sweep, a study's results)")
    p.add_argument("-o", "--out", default="wandb_group.html", help="the HTML page (default: wandb_group.html)")
    args = p.parse_args(argv)
    out = Path(args.out)
    by_group: dict[str, list[dict]] = defaultdict(list)
    for d in args.dirs:
        for run in read_offline_runs(d).values():
            by_group[run["run"]["group"] or "(no group)"].append(run)
    if not by_group:
        print(f"no offline W&B runs under {' '.join(args.dirs)}", file=sys.stderr)
        return 1
    body = "\n<hr>\n".join(group_page(g, runs, out) for g, runs in sorted(by_group.items()))
    out.write_text(f"<!doctype html><meta charset=\"utf-8\"><title>W&amp;B groups</title><style>{CSS}</style>\n"
                   f"{body}\n", encoding="utf-8")
    print(f"{out}: {', '.join(f'{g} ({len(r)} runs)' for g, r in sorted(by_group.items()))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
