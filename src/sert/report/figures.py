"""PNG figures (matplotlib, the ``plots`` extra): Figure 1 from the filter chain and from the judge, Figure 3
(judge criteria of test outputs) and Figure 4 (judge bins of the filter ablation)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sert.report.judge_tables import DEFAULT_BINS, JUDGE_FIGURES, Groups, label_order
from sert.report.names import CRITERIA, DATASET_NAMES
from sert.report.survival import Arms

FIGURE_NAMES = {"candidates": "fig1_sampling", "selected": "fig4_filter_ablation", "predictions": "fig3_criteria"}


def figures(groups: Groups, out_dir: Path, arms: Arms | None = None) -> tuple[list[Path], str | None]:
    """PNG figures; (paths, note) — the note explains when matplotlib is missing."""
    if not groups and not arms:
        return [], None
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return [], "Figures skipped: matplotlib is not installed (`pip install -e \".[plots]\"`)."
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = fig1_figure(arms or {}, out_dir, plt)
    for (target, dataset), labelled in sorted(groups.items()):
        path = out_dir / f"{FIGURE_NAMES.get(target, f'judge_{target}')}_{dataset}.png"
        judge_figure(target, dataset, labelled, path, plt)
        paths.append(path)
    return paths, None


def judge_figure(target: str, dataset: str, labelled: dict, path: Path, plt: Any) -> None:
    """Figure 3 (mean per criterion) for judged predictions, else score-bin shares per criterion."""
    labels = label_order(target, labelled)
    metrics = {lb: labelled[lb][0].judge_metrics() or {} for lb in labels}
    bins = next((m["bins"] for m in metrics.values() if m.get("bins")), DEFAULT_BINS)
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


def fig1_figure(arms: Arms, out_dir: Path, plt: Any) -> list[Path]:
    paths = []
    for ds, labelled in sorted(arms.items()):
        cols = ["overall", *sorted({k for _, sh in labelled.values() for k in sh if k != "overall"})]
        fig, ax = plt.subplots(figsize=(8, 3.8))
        _bars(ax, cols, {lb: [sh.get(c, (None, 0))[0] for c in cols] for lb, (_, sh) in sorted(labelled.items())})
        ax.set_ylim(0, 1)
        ax.set_ylabel("share of questions with ≥ 1 high-quality path")
        ax.set_title(f"Figure 1 — paths passing the whole filter chain, {DATASET_NAMES.get(ds, ds)} test", fontsize=10)
        fig.tight_layout()
        path = out_dir / f"fig1_filter_{ds}.png"
        fig.savefig(path, dpi=120)
        plt.close(fig)
        paths.append(path)
    return paths


def _bars(ax: Any, xs: list[str], series: dict[str, list], legend: bool = True) -> None:
    width = 0.8 / max(len(series), 1)
    for i, (label, values) in enumerate(series.items()):
        pos = [j + (i - (len(series) - 1) / 2) * width for j in range(len(xs))]
        ax.bar(pos, [0 if v is None else v for v in values], width, label=label)
    ax.set_xticks(range(len(xs)))
    ax.set_xticklabels(xs, fontsize=8)
    if legend:
        ax.legend(fontsize=7)
