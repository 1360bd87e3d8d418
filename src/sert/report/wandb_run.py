"""``sert-report DIR --wandb``: the report as one W&B run (job_type ``report``) in the group of the runs it reads.

Its tables are report.md's (Table II, lenient accuracy, seed by seed, paired differences, filter funnel, failed
runs), cell for cell, as ``wandb.Table``s under ``report/<name>``, and its figures are ``wandb.Image``s under
``figures/<name>``. Offline (no ``WANDB_API_KEY``, or ``WANDB_MODE=offline``) the run is written beside
report.md in ``wandb_report/wandb/offline-run-*`` for ``wandb sync``; running the report again continues the
same W&B run. The run carries no machine metadata (host, paths, packages): it is a summary of files that a
study commits.
"""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path

from sert.report.build import Report
from sert.report.runs import Run
from sert.report.stats import Options

log = logging.getLogger(__name__)

REPORT_DIR = "wandb_report"  # beside report.md: <out dir>/wandb_report/wandb/[offline-]run-*


def runs_group(runs: list[Run]) -> tuple[str | None, str | None, list[str]]:
    """(project, group) the runs logged to — the most common, from run.json's ``wandb`` record, else from
    ``experiment_name`` (+ ``_<profile>``) as the jobs name it — and notes when the runs disagree."""
    from sert.tracking import run_group

    projects: Counter = Counter()
    groups: Counter = Counter()
    for r in runs:
        record = r.wandb or {}
        projects[record.get("project") or r.cfg("logger.project")] += 1
        groups[record.get("group") or run_group(r.cfg("experiment_name"), r.choices, None)] += 1
    projects.pop(None, None)
    groups.pop(None, None)
    notes = [f"the runs are in {len(c)} W&B {what}s ({', '.join(map(str, c))}); the report run goes to the most "
             f"common one (--wandb-{what} chooses)"
             for what, c in (("project", projects), ("group", groups)) if len(c) > 1]
    top = lambda c: c.most_common(1)[0][0] if c else None  # noqa: E731
    return top(projects), top(groups), notes


def log_report(report: Report, opts: Options, project: str | None = None, entity: str | None = None,
               group: str | None = None, mode: str = "auto") -> str:
    """Log ``report`` as a W&B run; returns a line saying where it went."""
    import wandb

    from sert.tracking import job_run_id, resolve_mode

    found_project, found_group, notes = runs_group(report.runs)
    for note in notes if not (project and group) else []:
        log.warning("sert-report --wandb: %s", note)
    project, group, mode = project or found_project or "sert", group or found_group, resolve_mode(mode)
    if mode == "disabled":
        return "W&B report run not logged (WANDB_MODE=disabled)"
    run_dir = report.path.parent / REPORT_DIR
    run_dir.mkdir(parents=True, exist_ok=True)
    counts = Counter(r.stage for r in report.runs)
    config = {"report": report.path.parent.name, "runs": len(report.runs), "methods": sorted(counts),
              "models": sorted({r.model for r in report.runs}), "datasets": sorted({r.dataset for r in report.runs}),
              "resamples": opts.resamples, "ci": opts.level, "boot_seed": opts.boot_seed}
    run = wandb.init(project=project, entity=entity, group=group, job_type="report", mode=mode,
                     name=f"report/{report.path.parent.name}", tags=["report"], config=config, dir=str(run_dir),
                     id=job_run_id(run_dir), resume="allow", reinit="finish_previous",
                     settings=wandb.Settings(console="off", x_disable_meta=True, x_disable_stats=True,
                                             x_disable_machine_info=True, disable_git=True, disable_code=True,
                                             disable_job_creation=True, x_save_requirements=False))
    try:
        media = {f"report/{name}": wandb.Table(columns=t.header, data=t.rows) for name, t in report.tables.items()}
        media.update({f"figures/{p.stem}": wandb.Image(str(p)) for p in report.figures})
        run.log(media)
        failed = sum(r.status != "ok" for r in report.runs)
        run.summary.update({"runs": len(report.runs), "runs_not_ok": failed,
                            **{f"runs/{stage}": n for stage, n in sorted(counts.items())}})
        where = run.url or f"{run_dir / 'wandb'} (offline: wandb sync {run_dir / 'wandb'}/offline-run-*)"
        return f"W&B report run {run.id} (project {project}, group {group}): {where}"
    finally:
        run.finish()
