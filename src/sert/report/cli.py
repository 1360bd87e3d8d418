"""``sert-report DIR``: turn a run or multirun directory into the paper's Table II and Figures 1, 3 and 4.

The command line of ``sert-report`` (console script) and ``python -m sert.report``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from sert.report.build import build_report
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
        path, t2 = build_report(root, args.out, plots=not args.no_plots, opts=opts)
    except (ValueError, OSError) as e:  # a damaged or unreadable step file: named, no traceback
        print(f"sert-report: {e}", file=sys.stderr)
        return 1
    print(t2)
    print(f"\nreport: {path}")
    return 0
