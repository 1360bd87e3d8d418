"""``sert-report DIR``: turn a run or multirun directory into the paper's Table II and Figures 1, 3 and 4.

Reads every ``run.json`` under DIR (each run's manifest) and the files its steps wrote (``metrics.json``,
``predictions.jsonl``, ``filter_stats.json``, ``teacher_summary.json``, ``judge_metrics.json``, ``judge.jsonl``),
and writes ``DIR/report.md``:

- Table II: Model x Method rows, Acc (%), Fmt, Len, Rep per dataset (StrategyQA, then CommonsenseQA, as
  the paper), every seed of a cell aggregated (mean, bootstrap CI from the per-question predictions, seeds x n),
  the teacher's own zero-shot-CoT accuracy as a row, the paper's numbers beside ours; failed / unfinished
  cells shown as such and listed with their error;
- lenient Acc and prefix Fmt beside the strict ones (labelled), and paired differences with CIs for the
  paper's comparisons (SERT vs Finetune, SERT+RD vs RD) on the same seeds and questions;
- the filter funnel of every distinct filter step, and Figure 1 from the filter chain on the test split
  (share of questions with >= 1 path passing the whole chain, overall and per first-token rank);
- judge tables (means per criterion, score-bin shares, Figure 1's bins per first-token rank) and, with
  matplotlib (the ``plots`` extra), PNGs of Figures 1, 3 and 4.

Cells without a run are shown as ``—``, never filled. Method = the run's ``stage`` (finetune, sert, rd,
sert_rd), model = ``choices["model"]``, dataset = ``choices["dataset"]``, seed = ``config.seed``; a seed run
twice counts once (the newest ``run.json``), and the report says so.
``sert-report DIR --wandb`` also logs the report's tables and figures as one W&B run (``wandb_run``).
``sert-report DIR --collect DEST`` first copies the small results of every run into DEST (``collect``), so a
study's report regenerates from committed files alone, without checkpoints or the cache.

Modules: ``runs`` (reading run.json and step files), ``stats`` (bootstrap CIs), ``tables`` (Table II, its
additions, failures, filter funnel), ``survival`` (Figure 1 from the filter chain), ``judge_tables``,
``figures`` (PNGs), ``collect``, ``build`` (the report), ``wandb_run`` (the report as a W&B run) and ``cli``
(``sert-report``); ``names`` holds the paper's names, orders and numbers.
"""

from sert.report.build import Report, build_report, make_report
from sert.report.cli import main
from sert.report.collect import COLLECT_FILES, collect
from sert.report.names import DATASET_NAMES, MISSING, PAPER_TABLE2
from sert.report.runs import Run, find_runs
from sert.report.stats import Estimate, Options, bootstrap, estimate, fmt_estimate
from sert.report.survival import survival_rows, survival_shares
from sert.report.tables import table2

__all__ = ["COLLECT_FILES", "DATASET_NAMES", "MISSING", "PAPER_TABLE2", "Estimate", "Options", "Report", "Run",
           "bootstrap", "build_report", "collect", "estimate", "find_runs", "fmt_estimate", "main", "make_report",
           "survival_rows", "survival_shares", "table2"]
