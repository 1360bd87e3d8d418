"""``sert-report DIR``: turn a run or multirun directory into the paper's Table II and Figures 1, 3 and 4.

Reads every ``run.json`` under DIR (each run's manifest) and the metrics files its steps wrote
(``metrics.json``, ``filter_stats.json``, ``judge_metrics.json``), and writes ``DIR/report.md``:

- Table II: Model x Method rows, Acc (%), Fmt, Len, Rep per dataset (StrategyQA, then CommonsenseQA, as
  the paper), with the paper's numbers beside ours where model, method and dataset match;
- the filter funnel of every distinct filter step;
- judge tables (means per criterion, score-bin shares) and, with matplotlib (the ``plots`` extra), PNGs:
  Figure 1 (sampling arms: share of questions with an output in each bin), Figure 3 (per-criterion means
  per model x method), Figure 4 (filter ablation: score distribution per criterion).

Cells without a run are shown as ``—``, never filled. When several runs share a cell, the newest
(``run.json`` modification time) is shown and the report says so. Method = the run's ``stage``
(finetune, sert, rd, sert_rd), model = ``choices["model"]``, dataset = ``choices["dataset"]``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MISSING = "—"
METHODS = ["finetune", "sert", "sert_rd", "rd"]  # the paper's row order within a model
METHOD_NAMES = {"finetune": "Finetune", "sert": "SERT", "sert_rd": "SERT+RD", "rd": "RD"}
MODELS = ["gpt2", "gpt2-medium", "gpt2-large"]
MODEL_NAMES = {"gpt2": "GPT-2", "gpt2-medium": "GPT-2-medium", "gpt2-large": "GPT-2-large"}
DATASETS = ["strategy_qa", "commonsense_qa"]  # the paper's column order
DATASET_NAMES = {"strategy_qa": "StrategyQA", "commonsense_qa": "CommonsenseQA"}
FILTER_ORDER = ["raw", "pattern", "pattern_length", "pattern_length_rep2", "full"]
CRITERIA = ["coherence", "relevance", "logical_consistency", "completeness", "overall"]
METRICS = ["acc", "fmt", "len", "rep"]

# The paper's Table II (Zhang et al. 2025, arXiv 2502.12744, section IV), transcribed from
# ../shared/paper/sert-paper.txt: (model, method, dataset) -> (Acc %, Fmt, Len, Rep); None = "-" there.
# The GPT-3.5 zero-shot-CoT teacher row (SQA 53.45/-/76.77/0.36, CSQA 60.07/-/63.82/0.31) has no method here.
_T2 = {
    ("gpt2", "finetune"): ((54.00, None, None, None), (20.80, None, None, None)),
    ("gpt2", "sert"): ((54.00, 0.91, 145.33, 0.53), (20.72, 0.96, 120.80, 0.50)),
    ("gpt2", "sert_rd"): ((54.65, 0.99, 116.62, 0.50), (21.95, 0.97, 114.30, 0.49)),
    ("gpt2", "rd"): ((52.69, 0.92, 116.23, 0.52), (21.87, 0.91, 167.11, 0.61)),
    ("gpt2-medium", "finetune"): ((50.22, None, None, None), (19.82, None, None, None)),
    ("gpt2-medium", "sert"): ((55.17, 0.89, 149.11, 0.49), (23.10, 0.82, 160.26, 0.56)),
    ("gpt2-medium", "sert_rd"): ((56.34, 1.00, 103.42, 0.49), (25.72, 0.90, 116.34, 0.52)),
    ("gpt2-medium", "rd"): ((52.69, 0.85, 181.06, 0.56), (21.54, 0.66, 257.40, 0.67)),
    ("gpt2-large", "finetune"): ((53.57, None, None, None), (20.88, None, None, None)),
    ("gpt2-large", "sert"): ((55.75, 0.94, 63.06, 0.33), (22.63, 0.99, 77.53, 0.46)),
    ("gpt2-large", "sert_rd"): ((57.21, 0.97, 80.28, 0.47), (26.03, 1.00, 94.18, 0.47)),
    ("gpt2-large", "rd"): ((50.22, 0.79, 90.48, 0.51), (22.93, 0.93, 96.15, 0.51)),
}
PAPER_TABLE2: dict[tuple[str, str, str], tuple] = {
    (m, meth, ds): vals[i] for (m, meth), vals in _T2.items() for i, ds in enumerate(DATASETS)
}


# ----------------------------------------------------------------------------- reading runs
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

    def file(self, step: str, name: str) -> Path | None:
        """A step's artifact: through the run dir's symlink, else the cache dir recorded in the manifest."""
        for base in (self.dir / step, Path(self.steps.get(step, {}).get("dir", "/nonexistent"))):
            if (base / name).is_file():
                return base / name
        return None

    def json(self, step: str, name: str) -> dict | None:
        path = self.file(step, name)
        return json.loads(path.read_text(encoding="utf-8")) if path else None

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
            return f"{_model_name(self.model)} {'top-k alternatives' if mode == 'topk_alternatives' else mode}"
        if target == "selected":
            return f"{_model_name(self.model)} filter={self.filter}"
        return f"{_model_name(self.model)} {METHOD_NAMES.get(self.stage, self.stage)}"


def find_runs(root: str | os.PathLike) -> list[Run]:
    """Every run.json under ``root`` (not following symlinks, so cache entries are not walked twice)."""
    runs = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames[:] = [d for d in dirnames if d not in ("wandb", ".hydra", "cache")]
        if "run.json" in filenames:
            path = Path(dirpath) / "run.json"
            try:
                runs.append(_read_run(path))
            except (OSError, ValueError, KeyError) as e:
                print(f"sert-report: skipping {path}: {e}", file=sys.stderr)
    return runs


def _read_run(path: Path) -> Run:
    m = json.loads(path.read_text(encoding="utf-8"))
    cfg, ch = m.get("config") or {}, m.get("choices") or {}
    return Run(
        dir=path.parent, stage=m.get("stage") or cfg.get("stage", {}).get("name", "?"),
        model=ch.get("model") or cfg.get("model", {}).get("name", "?"),
        dataset=ch.get("dataset") or cfg.get("dataset", {}).get("name", "?"),
        choices=ch, config=cfg, mtime=path.stat().st_mtime,
        steps={s["step"]: s for s in m.get("steps", [])},
    )


# ----------------------------------------------------------------------------- formatting
def _model_name(m: str) -> str:
    return MODEL_NAMES.get(m, m)


def _ordered(values: set[str], order: list[str]) -> list[str]:
    return [v for v in order if v in values] + sorted(values - set(order))


def fmt_metric(name: str, value: Any) -> str:
    if value is None or isinstance(value, str):
        return MISSING
    if name == "acc":
        return f"{100 * value:.2f}"  # the paper reports accuracy in percent
    return f"{value:.2f}"


def _paper_cell(model: str, method: str, dataset: str) -> str:
    ref = PAPER_TABLE2.get((model, method, dataset))
    if ref is None:
        return MISSING
    return " / ".join(MISSING if v is None else f"{v:.2f}" for v in ref)


def _md_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def newest(runs: list[Run]) -> tuple[Run, int]:
    best = max(runs, key=lambda r: r.mtime)
    return best, len(runs)


# ----------------------------------------------------------------------------- Table II
def table2(runs: list[Run]) -> tuple[str, list[str]]:
    """Markdown Table II and notes (cells with several runs)."""
    evaluated = [r for r in runs if r.eval_metrics() is not None]
    if not evaluated:
        return "No evaluated runs (no `evaluate` step) under this directory.", []
    cells: dict[tuple[str, str, str], list[Run]] = defaultdict(list)
    for r in evaluated:
        cells[(r.model, r.stage, r.dataset)].append(r)
    models = _ordered({r.model for r in evaluated}, MODELS)
    methods = _ordered({r.stage for r in evaluated}, METHODS)
    datasets = _ordered({r.dataset for r in evaluated}, DATASETS)
    header = ["Model", "Method"]
    for ds in datasets:
        name = DATASET_NAMES.get(ds, ds)
        header += [f"{name} Acc", "Fmt", "Len", "Rep", f"{name} paper (Acc / Fmt / Len / Rep)"]
    rows, notes = [], []
    for model in models:
        for method in methods:
            row = [_model_name(model), METHOD_NAMES.get(method, method)]
            for ds in datasets:
                found = cells.get((model, method, ds))
                if found:
                    run, n = newest(found)
                    m = run.eval_metrics() or {}
                    row += [fmt_metric(k, m.get(k)) for k in METRICS]
                    if n > 1:
                        notes.append(f"{_model_name(model)} {METHOD_NAMES.get(method, method)} "
                                     f"{DATASET_NAMES.get(ds, ds)}: {n} runs, newest shown ({run.dir})")
                else:
                    row += [MISSING] * len(METRICS)
                row.append(_paper_cell(model, method, ds))
            rows.append(row)
    return _md_table(header, rows), notes


# ----------------------------------------------------------------------------- filter funnel
def funnel_table(runs: list[Run]) -> str:
    seen: dict[str, Run] = {}
    for r in sorted(runs, key=lambda r: r.mtime):
        if r.filter_stats() is not None:
            seen[r.steps["filter"]["key"]] = r  # one row per distinct filter artifact
    if not seen:
        return "No filter steps under this directory."
    rows = []
    for run in sorted(seen.values(), key=lambda r: (r.model, r.dataset, _rank(r.filter, FILTER_ORDER))):
        st = run.filter_stats() or {}
        steps = " → ".join(f"{f['filter']} {f['kept']} ({f.get('questions_with_path', MISSING)} q)"
                           for f in st.get("funnel", [])) or "(no filters)"
        rows.append([_model_name(run.model), DATASET_NAMES.get(run.dataset, run.dataset), run.filter or MISSING,
                     f"{st.get('candidates', MISSING)} ({st.get('questions', MISSING)} q)", steps,
                     str(st.get("selected", MISSING))])
    return _md_table(["Model", "Dataset", "Filter preset", "Candidates", "Kept after each filter (questions)",
                      "Selected"], rows)


def _rank(value: str | None, order: list[str]) -> int:
    return order.index(value) if value in order else len(order)


# ----------------------------------------------------------------------------- judge
JUDGE_FIGURES = {"candidates": "Figure 1 — sampling arms (judge on generated candidates)",
                 "selected": "Figure 4 — filter ablation (judge on selected paths)",
                 "predictions": "Figure 3 — reasoning quality of test outputs (judge on predictions)"}


def judge_groups(runs: list[Run]) -> dict[tuple[str, str], dict[str, tuple[Run, int]]]:
    """(judge target, dataset) -> label -> (newest run, number of runs with that label)."""
    groups: dict[tuple[str, str], dict[str, list[Run]]] = defaultdict(lambda: defaultdict(list))
    for r in runs:
        if r.judge_metrics() is not None:
            target = "input" if r.cfg("judge.input") else str(r.cfg("judge.target", "predictions"))
            groups[(target, r.dataset)][r.judge_label()].append(r)
    return {k: {label: newest(rs) for label, rs in v.items()} for k, v in groups.items()}


def _label_order(target: str, labelled: dict[str, tuple[Run, int]]) -> list[str]:
    """Paper order: filter presets in chain order, models by size then methods as in Table II."""
    def key(label: str) -> tuple:
        r = labelled[label][0]
        mode = _rank(r.cfg("generation.mode"), ["topk_alternatives", "raw"])  # Fig. 1: Token All, Raw, SERT raw
        return (_rank(r.model, MODELS), r.model, mode, _rank(r.filter, FILTER_ORDER), _rank(r.stage, METHODS), label)

    return sorted(labelled, key=key)


def judge_tables(groups: dict) -> list[str]:
    out = []
    for (target, dataset), labelled in sorted(groups.items()):
        title = JUDGE_FIGURES.get(target, f"Judge on {target}")
        out.append(f"### {title}: {DATASET_NAMES.get(dataset, dataset)}\n")
        means, bins_rows, notes = [], [], []
        bins: list[str] = []
        for label in _label_order(target, labelled):
            run, n = labelled[label]
            m = run.judge_metrics() or {}
            mean = m.get("mean", {})
            means.append([label, f"{m.get('scored', MISSING)}/{m.get('n', MISSING)}",
                          *[MISSING if mean.get(c) is None else f"{mean[c]:.2f}" for c in CRITERIA]])
            bins = m.get("bins", bins)
            key = "question_coverage" if target == "candidates" else "distribution"
            shares = (m.get(key) or {}).get("overall")
            bins_rows.append([label, *([f"{s:.2f}" for s in shares] if shares else [MISSING] * len(bins or [0] * 5))])
            if n > 1:
                notes.append(f"{label}: {n} runs, newest shown ({run.dir})")
        out.append(_md_table(["Run", "Scored/n", *[c.replace("_", " ").title() for c in CRITERIA]], means))
        what = ("share of questions with ≥ 1 output in the bin (overall score)" if target == "candidates"
                else "share of scored outputs in the bin (overall score)")
        out.append(f"\nScore bins — {what}:\n")
        out.append(_md_table(["Run", *(bins or ["[0,2)", "[2,4)", "[4,6)", "[6,8)", "[8,10]"])], bins_rows))
        out += [f"\n- {n}" for n in notes]
        out.append("")
    return out


# ----------------------------------------------------------------------------- figures
def figures(groups: dict, out_dir: Path) -> tuple[list[Path], str | None]:
    """PNG figures; (paths, note) — the note explains when matplotlib is missing."""
    if not groups:
        return [], None
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return [], "Figures skipped: matplotlib is not installed (`pip install -e \".[plots]\"`)."
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for (target, dataset), labelled in sorted(groups.items()):
        labels = _label_order(target, labelled)
        metrics = {lb: labelled[lb][0].judge_metrics() or {} for lb in labels}
        bins = next((m["bins"] for m in metrics.values() if m.get("bins")), ["[0,2)", "[2,4)", "[4,6)", "[6,8)", "[8,10]"])
        name = {"candidates": "fig1_sampling", "selected": "fig4_filter_ablation",
                "predictions": "fig3_criteria"}.get(target, f"judge_{target}")
        path = out_dir / f"{name}_{dataset}.png"
        if target == "predictions":
            fig, ax = plt.subplots(figsize=(9, 4))
            _bars(ax, [c.replace("_", " ") for c in CRITERIA],
                  {lb: [(m.get("mean") or {}).get(c) for c in CRITERIA] for lb, m in metrics.items()})
            ax.set_ylabel("mean judge score (0-10)")
            ax.set_ylim(0, 10)
        else:
            key = "question_coverage" if target == "candidates" else "distribution"
            crits = ["overall"] if target == "candidates" else CRITERIA
            fig, axes = plt.subplots(1, len(crits), figsize=(4.2 * len(crits), 3.8), squeeze=False)
            for i, (ax, crit) in enumerate(zip(axes[0], crits)):
                _bars(ax, bins, {lb: (m.get(key) or {}).get(crit) or [None] * len(bins) for lb, m in metrics.items()},
                      legend=i == 0)
                ax.set_title(crit.replace("_", " "))
                ax.set_xlabel("score")
                ax.set_ylim(0, 1)
            axes[0][0].set_ylabel("share of questions" if target == "candidates" else "share of outputs")
        fig.suptitle(f"{JUDGE_FIGURES.get(target, target)} — {DATASET_NAMES.get(dataset, dataset)}", fontsize=10)
        fig.tight_layout()
        fig.savefig(path, dpi=120)
        plt.close(fig)
        paths.append(path)
    return paths, None


def _bars(ax: Any, xs: list[str], series: dict[str, list], legend: bool = True) -> None:
    width = 0.8 / max(len(series), 1)
    for i, (label, values) in enumerate(series.items()):
        pos = [j + (i - (len(series) - 1) / 2) * width for j in range(len(xs))]
        ax.bar(pos, [0 if v is None else v for v in values], width, label=label)
    ax.set_xticks(range(len(xs)))
    ax.set_xticklabels(xs, fontsize=8)
    if legend:
        ax.legend(fontsize=7)


# ----------------------------------------------------------------------------- the report
def build_report(root: str | os.PathLike, out: str | os.PathLike | None = None, plots: bool = True) -> tuple[Path, str]:
    """Write the report; returns (report path, Table II markdown)."""
    root = Path(root).resolve()
    out = Path(out) if out else root / "report.md"
    runs = find_runs(root)
    t2, notes = table2(runs)
    groups = judge_groups(runs)
    lines = [f"# SERT report: {root}", "",
             f"{len(runs)} runs ({', '.join(f'{k}: {v}' for k, v in sorted(_count(r.stage for r in runs).items()))}). "
             f"Missing cells are shown as {MISSING}; nothing is filled in.", "",
             "## Table II — task metrics", "",
             "Acc in %, Fmt = share of well-formed outputs, Len = mean reasoning tokens, Rep = unigram repetition "
             "(paper III-D). The paper column gives Table II's numbers for the same model, method and dataset.", "",
             t2, ""]
    lines += [f"- {n}" for n in notes] + ([""] if notes else [])
    lines += ["## Filter funnel", "", funnel_table(runs), "", "## Judge (Table I prompt)", ""]
    lines += judge_tables(groups) if groups else ["No judge steps under this directory.", ""]
    if plots:
        paths, note = figures(groups, out.parent / "figures")
        if paths or note:
            lines += ["## Figures", ""]
        lines += [f"![{p.stem}]({p.relative_to(out.parent)})" for p in paths]
        if note:
            lines.append(note)
    from sert.artifacts import write_text

    write_text(out, "\n".join(lines).rstrip() + "\n")
    return out, t2


def _count(items: Any) -> dict[str, int]:
    counts: dict[str, int] = defaultdict(int)
    for i in items:
        counts[i] += 1
    return dict(counts)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="sert-report", description=__doc__.split("\n\n")[0])
    p.add_argument("dir", help="a run or multirun directory (every run.json below it is read)")
    p.add_argument("-o", "--out", help="report path (default: DIR/report.md; figures go beside it in figures/)")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG figures")
    args = p.parse_args(argv)
    if not Path(args.dir).is_dir():
        print(f"sert-report: {args.dir}: not a directory", file=sys.stderr)
        return 2
    path, t2 = build_report(args.dir, args.out, plots=not args.no_plots)
    print(t2)
    print(f"\nreport: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
