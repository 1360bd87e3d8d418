"""What the study drivers share (experiments/cpu_study/run.py, experiments/study_v2/run.py): cells of `sert` jobs,
run one after the other, resumable through the cache, their small results collected and the report rewritten.

A cell is a list of `sert` jobs, each run as its own process with `hydra.run.dir=<out>/<study>/<cell>/<job>`;
a failing job does not stop the others. Every step is cached under `<out>/cache`, so a killed or failed cell
resumes when it is run again (finished steps are cache hits; generation resumes from its partial file, the
teacher from its response cache, training from its last epoch checkpoint). After the jobs, the cell's small
results are copied into `<results>/<cell>/` (`sert-report --collect`: run.json, metrics, predictions, funnel,
teacher summary, judge rows, Figure 1 counts; never checkpoints or the cache) with each job's offline W&B run,
and `<results>/report.md` is regenerated from everything collected so far. A cell whose jobs all succeeded gets
`<results>/<cell>/CELL.json` (jobs, return codes, wall seconds, load average); `next` skips those cells.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

# The jobs' W&B runs are committed: no host, user, command line, Python path, git or package list in them, no
# system metrics (wandb.Settings x_disable_meta, x_disable_stats, x_disable_machine_info, disable_git, ...).
NO_MACHINE_METADATA = {"WANDB__DISABLE_META": "true", "WANDB__DISABLE_STATS": "true",
                       "WANDB__DISABLE_MACHINE_INFO": "true", "WANDB_DISABLE_GIT": "true", "WANDB_DISABLE_CODE": "true",
                       "WANDB__SAVE_REQUIREMENTS": "false"}


@dataclass
class Job:
    name: str
    overrides: list[str] | Callable[[Path], list[str]]  # a callable gets the cell's output dir


@dataclass
class Cell:
    name: str
    minutes: int  # estimated wall minutes on the idle 2-core machine (the study's README: how it was estimated)
    what: str
    jobs: list[Job] = field(default_factory=list)


def sert_checkpoint(cell_dir: Path, sert_prompt: str) -> list[str]:
    """Overrides that sample from the SERT model trained by the cell's `sert_model` job (a `stage=self_train` run
    that is a cache hit of the seed cell's SERT training), with its training prompt."""
    link = cell_dir / "sert_model" / "self_train"
    model = link.resolve() / "model"
    if not (model / "config.json").exists():
        raise FileNotFoundError(f"no self-trained checkpoint at {model} (did the sert_model job fail?)")
    base = json.loads((cell_dir / "sert_model" / "run.json").read_text())["config"]["model"]["name"]
    return [f"model.name={base}-sert", f"model.name_or_path={model}", "model.gguf_file=null",
            "model.tokenizer=null", "model.random_init=null", sert_prompt]


def run_cell(study: str, cell: Cell, args: argparse.Namespace) -> bool:
    cell_dir = Path(args.out).resolve() / study / cell.name
    results = Path(args.results)
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "SERT_OUTPUT_DIR": str(Path(args.out).resolve()), **NO_MACHINE_METADATA}
    t0, load0, jobs = time.time(), os.getloadavg(), []
    print(f"[{study}] cell {cell.name}: {cell.what} (estimated {cell.minutes} min)", flush=True)
    for job in cell.jobs:
        try:
            overrides = job.overrides(cell_dir) if callable(job.overrides) else list(job.overrides)
        except FileNotFoundError as e:
            print(f"[{study}] {cell.name}/{job.name}: skipped: {e}", file=sys.stderr)
            jobs.append({"job": job.name, "returncode": None, "seconds": 0.0, "error": str(e)})
            continue
        cmd = [sys.executable, "-m", "sert", *overrides, *args.teacher, *args.extra,
               f"hydra.run.dir={cell_dir / job.name}"]
        print("  $ " + " ".join(cmd[1:]), flush=True)
        if args.dry_run:
            continue
        (cell_dir / job.name).mkdir(parents=True, exist_ok=True)
        start = time.time()
        with open(cell_dir / f"{job.name}.log", "a", encoding="utf-8") as log:
            rc = subprocess.run(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT).returncode
        jobs.append({"job": job.name, "returncode": rc, "seconds": round(time.time() - start, 1)})
        print(f"  -> {'ok' if rc == 0 else f'FAILED ({rc}), log: {cell_dir / job.name}.log'} "
              f"in {jobs[-1]['seconds']:.0f} s", flush=True)
    if args.dry_run:
        return True
    from sert.artifacts import write_json
    from sert.report import build_report, collect

    collect(cell_dir, results / cell.name)
    copy_wandb_runs(cell_dir, results / cell.name)
    report, _ = build_report(results)
    ok = all(j["returncode"] == 0 for j in jobs)
    record = {"cell": cell.name, "what": cell.what, "estimated_minutes": cell.minutes, "jobs": jobs,
              "wall_seconds": round(time.time() - t0, 1), "loadavg_start": load0, "loadavg_end": os.getloadavg(),
              "extra_overrides": args.extra, "teacher_overrides": args.teacher,
              "finished": time.strftime("%Y-%m-%d %H:%M:%S")}
    if ok:
        write_json(results / cell.name / "CELL.json", record)
        (results / cell.name / "CELL.failed.json").unlink(missing_ok=True)
    else:
        write_json(results / cell.name / "CELL.failed.json", record)
    print(f"[{study}] cell {cell.name} {'done' if ok else 'NOT finished'} in {record['wall_seconds']:.0f} s; "
          f"report: {report}", flush=True)
    return ok


def copy_wandb_runs(cell_dir: Path, dest: Path) -> None:
    """Each job's W&B offline run (``<job>/wandb/offline-run-*``, the dashboard record: `wandb sync` uploads
    it) next to its collected results; every part of it (a job run again after a kill or a failure continues
    the same W&B run in a new ``offline-run-<time>-<id>`` directory)."""
    for job_dir in sorted(p for p in cell_dir.iterdir() if p.is_dir()):
        for part in sorted((job_dir / "wandb").glob("offline-run-*")):
            target = dest / job_dir.name / "wandb" / part.name
            if not target.exists():
                shutil.copytree(part, target, ignore=shutil.ignore_patterns("*.log", "tmp", "cache"))


def done(cell: Cell, results: Path) -> bool:
    return (results / cell.name / "CELL.json").is_file()


def main(study: str, cells: list[Cell], teacher: list[str], doc: str, argv: list[str] | None = None) -> int:
    """The drivers' command line: `list`, `next`, or cell names (``--dry-run`` prints the commands only)."""
    p = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    p.add_argument("cells", nargs="+", help="`list`, `next`, or cell names")
    p.add_argument("--out", default=os.environ.get("SERT_OUTPUT_DIR", str(ROOT / "outputs")),
                   help="run outputs and the cache (default: $SERT_OUTPUT_DIR or outputs/)")
    p.add_argument("--results", default=str(ROOT / "experiments" / "results" / study),
                   help=f"where the small results and report.md go (default: experiments/results/{study})")
    p.add_argument("--extra", nargs="*", default=[], help="hydra overrides appended to every job (smoke runs)")
    p.add_argument("--teacher", nargs="*", default=teacher, help=f"teacher overrides (default: {' '.join(teacher)})")
    p.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    args = p.parse_args(argv)
    table = {c.name: c for c in cells}
    results = Path(args.results)
    if args.cells == ["list"]:
        for c in table.values():
            print(f"{c.name:<16} {c.minutes:>4} min  {'done' if done(c, results) else 'todo':<5} {c.what}")
        print(f"total estimated: {sum(c.minutes for c in table.values()) / 60:.1f} h")
        return 0
    if args.cells == ["next"]:
        todo = [c for c in table.values() if not done(c, results)]
        if not todo:
            print(f"[{study}] every cell is done")
            return 0
        chosen = todo[:1]
    else:
        unknown = [n for n in args.cells if n not in table]
        if unknown:
            print(f"unknown cell(s) {unknown}; cells: {', '.join(table)}", file=sys.stderr)
            return 2
        chosen = [table[n] for n in args.cells]
    return 0 if all([run_cell(study, c, args) for c in chosen]) else 1
