"""Statistics of a report cell: bootstrap confidence intervals over seeds and questions."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sert.report.names import MISSING
from sert.report.runs import Run


@dataclass
class Options:
    """How confidence intervals are computed (``sert-report --resamples --ci --boot-seed``)."""

    resamples: int = 2000
    level: float = 0.95
    boot_seed: int = 0


@dataclass
class Estimate:
    mean: float | None
    lo: float | None = None
    hi: float | None = None
    seeds: int = 0
    n: int = 0  # questions per seed


def bootstrap(matrix: Any, opts: Options, key: Any) -> Estimate:
    """Mean and percentile CI of a (seeds x questions) matrix of per-question values (0/1 for Acc, Fmt).

    Each of ``opts.resamples`` replicates draws the questions with replacement ONCE (the same draw for every
    seed: the seeds answered the same test questions) and the seeds with replacement; the replicate's value
    is the mean over the drawn seeds of each seed's mean over the drawn questions. The CI is the
    (1-level)/2 and (1+level)/2 quantiles of the replicates. The RNG is seeded by (boot_seed, key), so a
    cell's interval does not depend on which other cells the report holds."""
    import numpy as np

    from sert.artifacts import stable_hash

    m = np.asarray(matrix, dtype=float)
    seeds, n = m.shape
    rng = np.random.default_rng([opts.boot_seed, int(stable_hash(key)[:12], 16)])
    counts = rng.multinomial(n, np.full(n, 1.0 / n), size=opts.resamples)  # (B, n) question draws
    per_seed = m @ counts.T / n  # (seeds, B)
    pick = rng.integers(seeds, size=(opts.resamples, seeds))  # (B, seeds) seed draws
    reps = per_seed[pick.T, np.arange(opts.resamples)].mean(axis=0)
    alpha = (1 - opts.level) / 2
    lo, hi = np.quantile(reps, [alpha, 1 - alpha])
    return Estimate(round(float(m.mean()), 6), round(float(lo), 6), round(float(hi), 6), seeds, n)


# per-question prediction field of each bootstrapped metric
ROW_FIELDS = {"acc": "correct", "acc_lenient": "correct_lenient", "fmt": "format_ok", "fmt_prefix": "format_prefix",
              "acc_option": "correct_option"}  # acc_option: option-likelihood accuracy (sert.likelihood)


def question_matrix(runs: dict[Any, Run], metric: str) -> tuple[list, list[str], Any] | None:
    """(seeds, common qids, seeds x questions matrix) of ``metric`` over the runs' predictions, or None
    when a run has no predictions or lacks the field."""
    fld = ROW_FIELDS[metric]
    tables = {}
    for seed, run in runs.items():
        rows = run.predictions()
        if not rows or any(r.get(fld) is None for r in rows):
            return None
        tables[seed] = {str(r["qid"]): float(r[fld]) for r in rows}
    seeds = sorted(tables, key=str)
    qids = sorted(set.intersection(*(set(t) for t in tables.values())))
    if not qids:
        return None
    return seeds, qids, [[tables[s][q] for q in qids] for s in seeds]


def estimate(runs: dict[Any, Run], metric: str, opts: Options, key: Any) -> Estimate:
    """Bootstrapped from predictions when every seed has them, else the mean of metrics.json values (no CI)."""
    found = question_matrix(runs, metric) if metric in ROW_FIELDS else None
    if found:
        return bootstrap(found[2], opts, key)
    values = [v for r in runs.values() if isinstance(v := (r.eval_metrics() or {}).get(metric), (int, float))]
    if not values:
        return Estimate(None)
    ns = [(r.eval_metrics() or {}).get("n") for r in runs.values()]
    return Estimate(round(sum(values) / len(values), 6), seeds=len(values), n=min((x for x in ns if x), default=0))


def seed_means(runs: dict[Any, Run], metric: str) -> dict[Any, float | None]:
    """Each seed's own mean of ``metric`` (over its predictions, else its metrics.json value)."""
    out = {}
    for seed in sorted(runs, key=str):
        found = question_matrix({seed: runs[seed]}, metric) if metric in ROW_FIELDS else None
        value = (runs[seed].eval_metrics() or {}).get(metric)
        out[seed] = sum(found[2][0]) / len(found[1]) if found else value if isinstance(value, (int, float)) else None
    return out


def scale(name: str) -> int:
    return 100 if name.startswith("acc") else 1  # accuracy in percent, as the paper


def fmt_by_seed(name: str, values: dict[Any, float | None], signed: bool = False) -> str:
    """``s0 49.78, s1 55.31`` (Acc in %, as ``fmt_estimate``)."""
    spec = "+.2f" if signed else ".2f"
    return ", ".join(f"s{seed} {MISSING if v is None else format(scale(name) * v, spec)}" for seed, v in values.items())


def fmt_estimate(name: str, e: Estimate) -> str:
    k = scale(name)
    if e.mean is None:
        return MISSING
    text = f"{k * e.mean:.2f}"
    return text if e.lo is None else f"{text} [{k * e.lo:.2f}, {k * e.hi:.2f}]"
