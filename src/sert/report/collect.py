"""``sert-report DIR --collect DEST``: copy the small results of every run, so a study's report regenerates from
committed files alone, without checkpoints or the cache."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from sert.portable import machine_roots, portable
from sert.report.runs import find_runs
from sert.report.survival import SURVIVAL_FILE, run_survival

# What a study commits per run (relative to the run dir): small, enough to regenerate the report.
COLLECT_FILES = {"evaluate": ["metrics.json", "predictions.jsonl"], "filter": ["filter_stats.json"],
                 "teacher": ["teacher_summary.json"], "judge": ["judge_metrics.json", "judge.jsonl"]}


def collect(src: str | os.PathLike, dest: str | os.PathLike) -> list[Path]:
    """Copy every run under ``src`` into ``dest/<run dir relative to src>/``: run.json, .hydra/overrides.yaml,
    the small per-step files of COLLECT_FILES (read through the run dir's cache symlinks), and the filter's
    ``path_survival.json`` (Figure 1's per-question, per-rank counts, computed here from the large
    candidates/rejected files, which are not copied). The JSON files and the overrides are copied with their
    absolute paths made portable (``sert.portable``: ``<cache>/...``, ``<site-packages>/...``, ``~/...``).
    Returns the destination run dirs."""
    from sert.artifacts import write_json

    src, dest = Path(src).resolve(), Path(dest)
    copied = []
    for run in find_runs(src):
        target = dest / run.dir.relative_to(src)
        target.mkdir(parents=True, exist_ok=True)
        roots = machine_roots(run.config.get("paths"))
        copy_portable(run.dir / "run.json", target / "run.json", roots)
        overrides = run.dir / ".hydra" / "overrides.yaml"
        if overrides.is_file():
            (target / ".hydra").mkdir(exist_ok=True)
            copy_portable(overrides, target / ".hydra" / "overrides.yaml", roots)
        for step, names in COLLECT_FILES.items():
            for name in names:
                path = run.file(step, name) if step in run.steps else None
                if path is not None:
                    (target / step).mkdir(exist_ok=True)
                    copy_portable(path, target / step / name, roots)
        rows = run_survival(run)
        if rows is not None:
            (target / "filter").mkdir(exist_ok=True)
            write_json(target / "filter" / SURVIVAL_FILE, {"rows": rows})
        copied.append(target)
    return copied


def copy_portable(path: Path, target: Path, roots: list[tuple[str, str]]) -> None:
    """Copy a file, its machine paths made portable: JSON and YAML as text (each line's strings), JSONL as is
    (model outputs); the source's mtime is kept (the report takes the newest run of a seed by it)."""
    if path.suffix in (".json", ".yaml"):
        target.write_text(portable(path.read_text(encoding="utf-8"), roots), encoding="utf-8")
        shutil.copystat(path, target)
    else:
        shutil.copy2(path, target)
