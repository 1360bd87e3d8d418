"""Reading runs: every ``run.json`` under a directory (each run's manifest) and the files its steps wrote."""

from __future__ import annotations

import os
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sert.artifacts import check_file, read_json, read_jsonl
from sert.report.names import method_name, model_name


@dataclass
class Run:
    dir: Path
    stage: str
    model: str
    dataset: str
    choices: dict
    config: dict
    mtime: float
    steps: dict[str, dict] = field(default_factory=dict)  # step name -> manifest entry
    status: str = "ok"  # run.json "status": running | ok | failed (manifests without it count as ok)
    error: dict | None = None  # {"type", "message", "step"} of a failed run
    wandb: dict | None = None  # {"project", "entity", "group", "id"} of the run's W&B run, when it logged one
    rel: str = ""  # the run dir relative to the report's root (printed instead of absolute paths)
    _predictions: list[dict] | None = field(default=None, repr=False, compare=False)  # read once

    @property
    def seed(self) -> Any:
        return self.cfg("seed")

    def predictions(self) -> list[dict] | None:
        """evaluate's predictions.jsonl rows (qid, correct, format_ok, correct_lenient, ...), or None."""
        if self._predictions is None:
            path = self.file("evaluate", "predictions.jsonl") if "evaluate" in self.steps else None
            if path is None:
                return None
            self._predictions = read_jsonl_file(path)
        return self._predictions

    def teacher_summary(self) -> dict | None:
        if "teacher" not in self.steps:
            return None
        return self.json("teacher", "teacher_summary.json") or self.steps["teacher"].get("summary")

    def file(self, step: str, name: str) -> Path | None:
        """A step's artifact: through the run dir's symlink, else the cache dir recorded in the manifest.
        A cached file that no longer matches its entry's record raises ``ValueError`` naming it."""
        for base in (self.dir / step, Path(self.steps.get(step, {}).get("dir", "/nonexistent"))):
            if (base / name).is_file():
                return check_file(base / name)
        return None

    def json(self, step: str, name: str) -> dict | None:
        path = self.file(step, name)
        return read_json(path) if path else None

    def eval_metrics(self) -> dict | None:
        if "evaluate" not in self.steps:
            return None
        return self.json("evaluate", "metrics.json") or self.steps["evaluate"].get("summary", {}).get("metrics")

    def filter_stats(self) -> dict | None:
        if "filter" not in self.steps:
            return None
        return self.json("filter", "filter_stats.json") or self.steps["filter"].get("summary", {}).get("funnel")

    def judge_metrics(self) -> dict | None:
        return self.json("judge", "judge_metrics.json") if "judge" in self.steps else None

    def cfg(self, dotted: str, default: Any = None) -> Any:
        node: Any = self.config
        for part in dotted.split("."):
            if not isinstance(node, dict) or part not in node:
                return default
            node = node[part]
        return node

    @property
    def filter(self) -> str | None:
        return self.choices.get("filter")

    def judge_label(self) -> str:
        """What distinguishes this judged run within its figure."""
        target = self.cfg("judge.target")
        if self.cfg("judge.input"):
            return f"input:{Path(str(self.cfg('judge.input'))).name}"
        if target == "candidates":
            mode = self.cfg("generation.mode", "?")
            return f"{model_name(self.model)} {'top-k alternatives' if mode == 'topk_alternatives' else mode}"
        if target == "selected":
            return f"{model_name(self.model)} filter={self.filter}"
        return f"{model_name(self.model)} {method_name(self.stage)}"


def read_jsonl_file(path: Path) -> list[dict]:
    return read_jsonl(path)  # a malformed line: ValueError naming the file and line


def find_runs(root: str | os.PathLike, skipped: list[str] | None = None) -> list[Run]:
    """Every run.json under ``root`` (not following symlinks, so cache entries are not walked twice). One that
    cannot be read is left out with a warning, and ``"<path>: <why>"`` is appended to ``skipped``."""
    runs = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames[:] = [d for d in dirnames if d not in ("wandb", ".hydra", "cache")]
        if "run.json" in filenames:
            path = Path(dirpath) / "run.json"
            try:
                run = _read_run(path)
                run.rel = os.path.relpath(dirpath, root)
                runs.append(run)
            except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
                msg = str(e) if str(e).startswith(str(path)) else f"{path}: {e}"  # read_json's messages start with the file
                print(f"sert-report: skipping {msg}", file=sys.stderr)
                if skipped is not None:
                    skipped.append(os.path.relpath(path, root) + msg[len(str(path)):])
    return runs


def _read_run(path: Path) -> Run:
    m = read_json(path)
    cfg, ch = m.get("config") or {}, m.get("choices") or {}
    return Run(
        dir=path.parent, stage=m.get("stage") or cfg.get("stage", {}).get("name", "?"),
        model=ch.get("model") or cfg.get("model", {}).get("name", "?"),
        dataset=ch.get("dataset") or cfg.get("dataset", {}).get("name", "?"),
        choices=ch, config=cfg, mtime=path.stat().st_mtime,
        steps={s["step"]: s for s in m.get("steps", [])},
        status=str(m.get("status") or "ok"), error=m.get("error"), wandb=m.get("wandb"),
    )


def newest(runs: list[Run]) -> tuple[Run, int]:
    """The newest run and how many runs there were."""
    best = max(runs, key=lambda r: r.mtime)
    return best, len(runs)


def per_seed_runs(runs: list[Run]) -> tuple[dict[Any, Run], list[str]]:
    """One run per seed (the newest when a seed was run more than once) and notes about the duplicates."""
    by_seed: dict[Any, list[Run]] = defaultdict(list)
    for r in runs:
        by_seed[r.seed].append(r)
    notes = [f"seed {seed}: {len(rs)} runs, newest used ({max(rs, key=lambda r: r.mtime).rel})"
             for seed, rs in by_seed.items() if len(rs) > 1]
    return {seed: max(rs, key=lambda r: r.mtime) for seed, rs in by_seed.items()}, notes
