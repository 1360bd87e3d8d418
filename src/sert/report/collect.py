"""``sert-report DIR --collect DEST``: copy the small results of every run, so a study's report regenerates from
committed files alone, without checkpoints or the cache."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from sert.report.runs import find_runs
from sert.report.survival import SURVIVAL_FILE, run_survival

# What a study commits per run (relative to the run dir): small, enough to regenerate the report.
COLLECT_FILES = {"evaluate": ["metrics.json", "predictions.jsonl"], "filter": ["filter_stats.json"],
                 "teacher": ["teacher_summary.json"], "judge": ["judge_metrics.json", "judge.jsonl"]}


def collect(src: str | os.PathLike, dest: str | os.PathLike) -> list[Path]:
    """Copy every run under ``src`` into ``dest/<run dir relative to src>/``: run.json, .hydra/overrides.yaml,
    the small per-step files of COLLECT_FILES (read through the run dir's cache symlinks), and the filter's
    ``path_survival.json`` (Figure 1's per-question, per-rank counts, computed here from the large
    candidates/rejected files, which are not copied). Returns the destination run dirs."""
    from sert.artifacts import write_json

    src, dest = Path(src).resolve(), Path(dest)
    copied = []
    for run in find_runs(src):
        target = dest / run.dir.relative_to(src)
        target.mkdir(parents=True, exist_ok=True)
        shutil.copy2(run.dir / "run.json", target / "run.json")  # keeps the mtime: "newest run of a seed"
        overrides = run.dir / ".hydra" / "overrides.yaml"
        if overrides.is_file():
            (target / ".hydra").mkdir(exist_ok=True)
            shutil.copyfile(overrides, target / ".hydra" / "overrides.yaml")
        for step, names in COLLECT_FILES.items():
            for name in names:
                path = run.file(step, name) if step in run.steps else None
                if path is not None:
                    (target / step).mkdir(exist_ok=True)
                    shutil.copyfile(path, target / step / name)
        rows = run_survival(run)
        if rows is not None:
            (target / "filter").mkdir(exist_ok=True)
            write_json(target / "filter" / SURVIVAL_FILE, {"rows": rows})
        copied.append(target)
    return copied
