"""``sert-report DIR``: turn a run or multirun directory into the paper's Table II and Figures 1, 3 and 4.

The command line of ``sert-report`` (console script) and ``python -m sert.report``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from sert.report.build import make_report
from sert.report.collect import collect
from sert.report.stats import Options


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sert-report", description=__doc__.split("\n\n")[0])
    p.add_argument("dir", help="a run or multirun directory (every run.json below it is read)")
    p.add_argument("-o", "--out", help="report path (default: DIR/report.md; figures go beside it in figures/)")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG figures")
    p.add_argument("--resamples", type=int, default=Options.resamples, help="bootstrap replicates (default 2000)")
    p.add_argument("--ci", type=float, default=Options.level, help="confidence level (default 0.95)")
    p.add_argument("--boot-seed", type=int, default=Options.boot_seed, help="bootstrap RNG seed (default 0)")
    p.add_argument("--collect", metavar="DEST", help="copy the small results of every run under DIR into DEST "
                   "(run.json, metrics, predictions, funnel, teacher summary, judge rows, Figure 1 counts) "
                   "and write the report there")
    w = p.add_argument_group("W&B", "log the report's tables and figures as one run (job_type report) in the group "
                             "of the runs it reads; offline without WANDB_API_KEY (wandb sync uploads it later)")
    w.add_argument("--wandb", action="store_true", help="log the report to W&B")
    w.add_argument("--wandb-project", help="default: the runs' project (run.json), else sert")
    w.add_argument("--wandb-entity", help="default: the API key's default entity")
    w.add_argument("--wandb-group", help="default: the runs' group (run.json, else experiment_name)")
    w.add_argument("--wandb-mode", default="auto", choices=["auto", "online", "offline", "disabled"],
                   help="auto: $WANDB_MODE if set, else online with $WANDB_API_KEY, else offline")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if not Path(args.dir).is_dir():
        print(f"sert-report: {args.dir}: not a directory", file=sys.stderr)
        return 2
    if not 0 < args.ci < 1 or args.resamples < 1:
        print("sert-report: --ci must be in (0, 1) and --resamples >= 1", file=sys.stderr)
        return 2
    root = args.dir
    opts = Options(resamples=args.resamples, level=args.ci, boot_seed=args.boot_seed)
    try:
        if args.collect:
            copied = collect(args.dir, args.collect)
            print(f"collected {len(copied)} runs into {args.collect}")
            root = args.collect
        report = make_report(root, args.out, plots=not args.no_plots, opts=opts)
    except (ValueError, OSError) as e:  # a damaged or unreadable step file: named, no traceback
        print(f"sert-report: {e}", file=sys.stderr)
        return 1
    print(report.table2)
    print(f"\nreport: {report.path}")
    if args.wandb:
        from sert.report.wandb_run import log_report

        print(log_report(report, opts, project=args.wandb_project, entity=args.wandb_entity, group=args.wandb_group,
                         mode=args.wandb_mode))
    return 0
