"""The report: every section in the paper's order, written to ``DIR/report.md`` (figures beside it)."""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from sert.report.figures import figures
from sert.report.judge_tables import judge_by_rank, judge_groups, judge_tables
from sert.report.names import MISSING, MdTable
from sert.report.runs import Run, find_runs
from sert.report.stats import Options
from sert.report.survival import fig1_arms, fig1_tables
from sert.report.tables import (cell_failures, funnel_table, lenient_table, paired_differences, seed_table, table2,
                                unfinished_runs)


@dataclass
class Report:
    """A written report: its path, its runs, its tables by name (as in report.md) and its figures."""

    path: Path
    runs: list[Run]
    table2: str = ""  # Table II's markdown (or why there is none)
    tables: dict[str, MdTable] = field(default_factory=dict)  # table2, lenient, seed_by_seed, paired_differences, ...
    figures: list[Path] = field(default_factory=list)


def build_report(root: str | os.PathLike, out: str | os.PathLike | None = None, plots: bool = True,
                 opts: Options | None = None) -> tuple[Path, str]:
    """Write the report; returns (report path, Table II markdown)."""
    opts = opts or Options()
    report = make_report(root, out, plots, opts)
    return report.path, report.table2


def make_report(root: str | os.PathLike, out: str | os.PathLike | None = None, plots: bool = True,
                opts: Options | None = None) -> Report:
    """Write the report (``DIR/report.md`` unless ``out``; figures beside it)."""
    opts = opts or Options()
    root = Path(root).resolve()
    out = Path(out) if out else root / "report.md"
    skipped: list[str] = []
    runs = find_runs(root, skipped)
    t2, notes = table2(runs, opts)
    report = Report(out, runs, t2)
    tables = report.tables
    tables["table2"] = t2
    groups = judge_groups(runs)
    arms = fig1_arms(runs)
    counts = sorted(Counter(r.stage for r in runs).items())
    lines = [f"# SERT report: {root.name}", "",
             f"{len(runs)} runs ({', '.join(f'{k}: {v}' for k, v in counts)}). "
             f"Missing cells are shown as {MISSING}; nothing is filled in.", ""]
    lines += _table2_section(t2, notes, opts)
    lines += _additions(runs, opts, tables)
    lines += _failures(root, runs, tables, skipped)
    tables["funnel"] = funnel_table(runs)
    lines += ["## Filter funnel", "", tables["funnel"], ""]
    if arms:
        lines += fig1_tables(arms)
    lines += ["## Judge (Table I prompt)", ""]
    lines += judge_tables(groups) if groups else ["No judge steps under this directory.", ""]
    lines += judge_by_rank(runs)
    if plots:
        paths, note = figures(groups, out.parent / "figures", arms)
        report.figures = paths
        if paths or note:
            lines += ["## Figures", ""]
        lines += [f"![{p.stem}]({p.relative_to(out.parent)})" for p in paths]
        if note:
            lines.append(note)
    from sert.artifacts import write_text

    write_text(out, "\n".join(lines).rstrip() + "\n")
    report.tables = {name: t for name, t in tables.items() if isinstance(t, MdTable)}  # not "No ... steps" notes
    return report


def _ci(opts: Options) -> str:
    return f"{100 * opts.level:g}% CI"


def _table2_section(t2: str, notes: list[str], opts: Options) -> list[str]:
    lines = ["## Table II — task metrics", "",
             "Acc in %, Fmt = share of well-formed outputs (the paper's strict definitions, paper III-D), Len = mean "
             "reasoning tokens, Rep = unigram repetition. Every seed of a cell is aggregated: Acc and Fmt show the "
             f"mean over seeds with a {_ci(opts)} in brackets (bootstrap: questions resampled once per replicate and "
             f"shared by the seeds, seeds resampled, {opts.resamples} replicates, RNG seed {opts.boot_seed}); Len and "
             "Rep are means over seeds; seeds×n = seeds × test questions per seed. A cell without predictions.jsonl "
             "shows the metrics.json mean without a CI. Failed or unfinished cells say so. The paper column gives "
             "Table II's numbers for the same model, method and dataset.", "",
             t2, ""]
    return lines + [f"- {n}" for n in notes] + ([""] if notes else [])


def _additions(runs: list[Run], opts: Options, tables: dict) -> list[str]:
    """The labelled additions to Table II: lenient Acc / prefix Fmt, and the paired differences."""
    lines = []
    lenient = tables["lenient"] = lenient_table(runs, opts)
    if lenient:
        lines += ["### Strict and lenient accuracy, strict and prefix format (labelled additions)", "",
                  "Acc (lenient): when the strict extraction finds no answer, the last answer candidate in the output "
                  "(reasoning-teacher's fallback). Fmt (prefix): the output starts with reasoning and its first "
                  "\"So the answer is\" sentence has a parsable answer, whatever follows (`sert.metrics`). "
                  f"Not the paper's metrics. Same {_ci(opts)} method.", "", lenient, ""]
    seeds = tables["seed_by_seed"] = seed_table(runs)
    if seeds:
        lines += ["### Seed by seed", "",
                  "Each seed's own strict Acc (%) and Fmt for the cells run with more than one seed: the spread the "
                  "intervals above include.", "", seeds, ""]
    diffs, dnotes = paired_differences(runs, opts)
    tables["paired_differences"] = diffs
    if diffs or dnotes:
        lines += ["### Paired differences (the paper's comparisons)", "",
                  "Accuracy difference in percentage points between two arms of the same model and dataset, paired "
                  f"by seed and question (only seeds and questions present in both arms), {_ci(opts)} by the same "
                  "bootstrap over the per-question differences. An interval containing 0 is inside the noise. ΔFmt: the "
                  "same for the share of well-formed outputs (— when an arm, e.g. the label-only Finetune, has no "
                  "Fmt). The last column is each seed's own Acc difference.", "",
                  *([diffs, ""] if diffs else []), *[f"- {n}" for n in dnotes], ""]
    return lines


def _failures(root: Path, runs: list[Run], tables: dict, skipped: list[str]) -> list[str]:
    lines = []
    if skipped:
        lines += ["## Unreadable run.json files", "",
                  "Left out of every table above (a run killed while writing its manifest, or a damaged file).", "",
                  *[f"- {s}" for s in skipped], ""]
    cells_failed = tables["cells_not_finished"] = cell_failures(root)
    if cells_failed:
        lines += ["## Study cells not finished", "",
                  "Cells whose driver run had a failing job (`CELL.failed.json`, written by "
                  "experiments/cpu_study/run.py; a job that failed before writing run.json shows only here).", "",
                  cells_failed, ""]
    bad = tables["failed_runs"] = unfinished_runs(runs)
    if bad:
        lines += ["## Failed and unfinished runs", "",
                  "Runs whose run.json status is not `ok` (`running` also covers a killed process).", "", bad, ""]
    return lines
