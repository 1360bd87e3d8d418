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
``sert-report DIR --collect DEST`` first copies the small results of every run into DEST (``collect``), so a
study's report regenerates from committed files alone, without checkpoints or the cache.
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
    status: str = "ok"  # run.json "status": running | ok | failed (manifests without it count as ok)
    error: dict | None = None  # {"type", "message", "step"} of a failed run
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
            self._predictions = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()
                                 if line.strip()]
        return self._predictions

    def teacher_summary(self) -> dict | None:
        if "teacher" not in self.steps:
            return None
        return self.json("teacher", "teacher_summary.json") or self.steps["teacher"].get("summary")

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
                run = _read_run(path)
                run.rel = os.path.relpath(dirpath, root)
                runs.append(run)
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
        status=str(m.get("status") or "ok"), error=m.get("error"),
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


# ----------------------------------------------------------------------------- statistics
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


def per_seed_runs(runs: list[Run]) -> tuple[dict[Any, Run], list[str]]:
    """One run per seed (the newest when a seed was run more than once) and notes about the duplicates."""
    by_seed: dict[Any, list[Run]] = defaultdict(list)
    for r in runs:
        by_seed[r.seed].append(r)
    notes = [f"seed {seed}: {len(rs)} runs, newest used ({max(rs, key=lambda r: r.mtime).rel})"
             for seed, rs in by_seed.items() if len(rs) > 1]
    return {seed: max(rs, key=lambda r: r.mtime) for seed, rs in by_seed.items()}, notes


# per-question prediction field of each bootstrapped metric
ROW_FIELDS = {"acc": "correct", "acc_lenient": "correct_lenient", "fmt": "format_ok", "fmt_prefix": "format_prefix"}


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


def fmt_estimate(name: str, e: Estimate) -> str:
    scale = 100 if name.startswith("acc") else 1  # accuracy in percent, as the paper
    if e.mean is None:
        return MISSING
    text = f"{scale * e.mean:.2f}"
    return text if e.lo is None else f"{text} [{scale * e.lo:.2f}, {scale * e.hi:.2f}]"


# ----------------------------------------------------------------------------- Table II
PAPER_TEACHER = {"strategy_qa": (53.45, None, 76.77, 0.36), "commonsense_qa": (60.07, None, 63.82, 0.31)}  # GPT-3.5
COMPARISONS = [("sert", "finetune"), ("sert_rd", "rd")]  # the paper's claims: SERT vs Finetune, SERT+RD vs RD


def _is_method_run(r: Run) -> bool:
    steps = r.cfg("stage.steps") or []
    return r.stage in METHODS or "evaluate" in steps or "evaluate" in r.steps


def table2_cells(runs: list[Run]) -> dict[tuple[str, str, str], dict[str, list[Run]]]:
    """(model, method, dataset) -> {"ok": evaluated runs, "other": failed / running runs without evaluation}."""
    cells: dict[tuple[str, str, str], dict[str, list[Run]]] = defaultdict(lambda: {"ok": [], "other": []})
    for r in runs:
        if r.eval_metrics() is not None:
            cells[(r.model, r.stage, r.dataset)]["ok"].append(r)
        elif r.status != "ok" and _is_method_run(r):
            cells[(r.model, r.stage, r.dataset)]["other"].append(r)
    return cells


def status_label(r: Run) -> str:
    if r.status == "failed":
        return f"failed ({(r.error or {}).get('type') or '?'})"
    return "running/killed" if r.status == "running" else r.status


def table2(runs: list[Run], opts: Options | None = None) -> tuple[str, list[str]]:
    """Markdown Table II (strict Acc and Fmt as the paper, every seed aggregated) and notes."""
    opts = opts or Options()
    cells = table2_cells(runs)
    teachers = teacher_rows(runs, opts)
    if not cells and not teachers:
        return "No evaluated runs (no `evaluate` step) under this directory.", []
    models = _ordered({k[0] for k in cells}, MODELS)
    methods = _ordered({k[1] for k in cells}, METHODS)
    datasets = _ordered({k[2] for k in cells} | {ds for ds, _ in teachers}, DATASETS)
    header = ["Model", "Method"]
    for ds in datasets:
        name = DATASET_NAMES.get(ds, ds)
        header += [f"{name} Acc", "Fmt", "Len", "Rep", "seeds×n", f"{name} paper (Acc / Fmt / Len / Rep)"]
    rows, notes = [], []
    for model in models:
        for method in methods:
            row = [_model_name(model), METHOD_NAMES.get(method, method)]
            for ds in datasets:
                cell = cells.get((model, method, ds))
                label = f"{_model_name(model)} {METHOD_NAMES.get(method, method)} {DATASET_NAMES.get(ds, ds)}"
                if cell and cell["ok"]:
                    chosen, dup = per_seed_runs(cell["ok"])
                    notes += [f"{label}: {d}" for d in dup]
                    est = {k: estimate(chosen, k, opts, (model, method, ds, k)) for k in METRICS}
                    row += [fmt_estimate(k, est[k]) for k in METRICS]
                    row.append(f"{est['acc'].seeds}×{est['acc'].n}")
                    if cell["other"]:
                        notes.append(f"{label}: also {len(cell['other'])} unfinished run(s) "
                                     f"({', '.join(status_label(r) for r in cell['other'])}), see below")
                elif cell and cell["other"]:
                    row += [", ".join(sorted({status_label(r) for r in cell["other"]}))] + [MISSING] * len(METRICS)
                else:
                    row += [MISSING] * (len(METRICS) + 1)
                row.append(_paper_cell(model, method, ds))
            rows.append(row)
    for name in sorted({n for _, n in teachers}):
        row = [f"Teacher: {name}", "zero-shot CoT"]
        for ds in datasets:
            t = teachers.get((ds, name))
            row += [fmt_estimate("acc", t[0]) if t else MISSING, MISSING, MISSING, MISSING,
                    f"{t[0].seeds}×{t[0].n}" if t else MISSING]
            ref = PAPER_TEACHER.get(ds)
            row.append("GPT-3.5: " + " / ".join(MISSING if v is None else f"{v:.2f}" for v in ref) if ref else MISSING)
            if t:
                notes.append(f"Teacher {name} {DATASET_NAMES.get(ds, ds)}: {t[1]}")
        rows.append(row)
    return _md_table(header, rows), notes


def teacher_rows(runs: list[Run], opts: Options) -> dict[tuple[str, str], tuple[Estimate, str]]:
    """(dataset, teacher name) -> (accuracy estimate, where it was measured): the teacher step's own
    zero-shot-CoT accuracy (``teacher_summary.json``: teacher/acc over its samples), one value per distinct
    teacher cache entry; entries of equal size count as seeds, otherwise they are pooled."""
    entries: dict[tuple[str, str], dict[str, tuple[Run, dict]]] = defaultdict(dict)
    for r in runs:
        summary = r.teacher_summary()
        if not summary or not summary.get("samples"):
            continue
        name = str(r.cfg("teacher.model") or "teacher")
        if r.cfg("teacher.input"):
            name = f"{name} (file {Path(str(r.cfg('teacher.input'))).name})"
        entries[(r.dataset, name)][r.steps["teacher"].get("key", str(r.dir))] = (r, summary)
    out = {}
    for key, found in entries.items():
        vectors = []
        for _, summary in found.values():
            n = int(summary["samples"])
            k = round(float((summary.get("metrics") or {}).get("teacher/acc", 0.0)) * n)
            vectors.append([1.0] * k + [0.0] * (n - k))
        if len({len(v) for v in vectors}) > 1:
            vectors = [[x for v in vectors for x in v]]
        run = next(iter(found.values()))[0]
        split = run.cfg("dataset.split", "train")
        where = (f"{len(found)} teacher run(s) on {len(vectors[0])} {split}-split samples each "
                 "(the questions it answered for distillation; the paper's row is on the test set)")
        out[key] = (bootstrap(vectors, opts, ("teacher", *key)), where)
    return out


def lenient_table(runs: list[Run], opts: Options) -> str | None:
    """Labelled additions beside the paper's strict Acc / Fmt: lenient Acc and prefix Fmt."""
    cells = {k: v for k, v in table2_cells(runs).items() if v["ok"]}
    if not cells:
        return None
    rows = []
    for key in sorted(cells, key=lambda k: (_rank(k[2], DATASETS), _rank(k[0], MODELS), k[0], _rank(k[1], METHODS))):
        model, method, ds = key
        chosen, _ = per_seed_runs(cells[key]["ok"])
        est = {k: estimate(chosen, k, opts, (model, method, ds, k)) for k in ROW_FIELDS}  # acc, fmt, lenient, prefix
        rows.append([DATASET_NAMES.get(ds, ds), _model_name(model), METHOD_NAMES.get(method, method),
                     *[fmt_estimate(k, e) for k, e in est.items()]])
    return _md_table(["Dataset", "Model", "Method", "Acc (strict)", "Acc (lenient)", "Fmt (strict)", "Fmt (prefix)"],
                     rows)


def paired_differences(runs: list[Run], opts: Options) -> tuple[str | None, list[str]]:
    """SERT − Finetune and SERT+RD − RD accuracy (percentage points) on the same questions, paired by seed."""
    cells = {k: per_seed_runs(v["ok"])[0] for k, v in table2_cells(runs).items() if v["ok"]}
    rows, notes = [], []
    for (model, method, ds) in sorted(cells, key=lambda k: (_rank(k[2], DATASETS), _rank(k[0], MODELS), k[0])):
        for a, b in COMPARISONS:
            if method != a or (model, b, ds) not in cells:
                continue
            what = f"{METHOD_NAMES[a]} − {METHOD_NAMES[b]}"
            label = f"{_model_name(model)} {DATASET_NAMES.get(ds, ds)} {what}"
            ra, rb = cells[(model, a, ds)], cells[(model, b, ds)]
            seeds = sorted(set(ra) & set(rb), key=str)
            if not seeds:
                notes.append(f"{label}: no seed run in both arms, no paired difference")
                continue
            row, sizes = [DATASET_NAMES.get(ds, ds), _model_name(model), what], []
            for metric in ("acc", "acc_lenient"):
                ma = question_matrix({s: ra[s] for s in seeds}, metric)
                mb = question_matrix({s: rb[s] for s in seeds}, metric)
                common = sorted(set(ma[1]) & set(mb[1])) if ma and mb else []
                if not common:
                    row.append(MISSING)
                    continue
                qa, qb = {q: i for i, q in enumerate(ma[1])}, {q: i for i, q in enumerate(mb[1])}
                if len(common) < max(len(qa), len(qb)):
                    notes.append(f"{label} ({metric}): {len(common)} questions in both arms "
                                 f"(of {len(qa)} / {len(qb)}); only those are compared")
                diff = [[ma[2][i][qa[q]] - mb[2][i][qb[q]] for q in common] for i in range(len(seeds))]
                row.append(fmt_estimate("acc", bootstrap(diff, opts, (model, ds, a, b, metric))))
                sizes.append(len(common))
            if not sizes:
                notes.append(f"{label}: no per-question predictions in both arms, no paired difference")
                continue
            row.append(f"{len(seeds)}×{sizes[0]}")
            rows.append(row)
    if not rows:
        return None, notes
    return _md_table(["Dataset", "Model", "Comparison", "ΔAcc (pp)", "ΔAcc lenient (pp)", "seeds×n"], rows), notes


def cell_failures(root: Path) -> str | None:
    rows = []
    for path in sorted(root.rglob("CELL.failed.json")):
        rec = json.loads(path.read_text(encoding="utf-8"))
        bad = [j for j in rec.get("jobs", []) if j.get("returncode") != 0]
        why = {id(j): "skipped" if j.get("returncode") is None else f"exit {j['returncode']}" for j in bad}
        rows.append([str(rec.get("cell", path.parent.name)), rec.get("finished", MISSING),
                     ", ".join(f"{j['job']} ({why[id(j)]})" for j in bad) or MISSING])
    return _md_table(["Cell", "Finished at", "Failed jobs"], rows) if rows else None


def unfinished_runs(runs: list[Run]) -> str | None:
    bad = [r for r in runs if r.status != "ok"]
    if not bad:
        return None
    rows = []
    for r in sorted(bad, key=lambda r: (r.model, r.stage, r.dataset, str(r.seed))):
        e = r.error or {}
        msg = " ".join(str(e.get("message") or "").split())
        rows.append([_model_name(r.model), METHOD_NAMES.get(r.stage, r.stage), DATASET_NAMES.get(r.dataset, r.dataset),
                     str(r.seed), status_label(r), str(e.get("step") or MISSING),
                     (msg[:200] + "…" if len(msg) > 200 else msg).replace("|", "\\|") or MISSING, r.rel])
    return _md_table(["Model", "Stage", "Dataset", "Seed", "Status", "Step", "Error", "Run dir"], rows)


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
        rows.append([_model_name(str(run.cfg("model.name") or run.model)), DATASET_NAMES.get(run.dataset, run.dataset),
                     str(run.cfg("dataset.split") or MISSING), run.filter or MISSING,
                     f"{st.get('candidates', MISSING)} ({st.get('questions', MISSING)} q)", steps,
                     str(st.get("selected", MISSING))])
    return _md_table(["Model", "Dataset", "Split", "Filter preset", "Candidates", "Kept after each filter (questions)",
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
                notes.append(f"{label}: {n} runs, newest shown ({run.rel})")
        out.append(_md_table(["Run", "Scored/n", *[c.replace("_", " ").title() for c in CRITERIA]], means))
        what = ("share of questions with ≥ 1 output in the bin (overall score)" if target == "candidates"
                else "share of scored outputs in the bin (overall score)")
        out.append(f"\nScore bins — {what}:\n")
        out.append(_md_table(["Run", *(bins or ["[0,2)", "[2,4)", "[4,6)", "[6,8)", "[8,10]"])], bins_rows))
        out += [f"\n- {n}" for n in notes]
        out.append("")
    return out


# ----------------------------------------------------------------------------- figures
def figures(groups: dict, out_dir: Path, arms: dict | None = None) -> tuple[list[Path], str | None]:
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


# ----------------------------------------------------------------------------- Figure 1 from the filter chain
SURVIVAL_FILE = "path_survival.json"


def survival_rows(candidates: list[dict], rejected: list[dict]) -> list[dict]:
    """Per (question, first-token rank): how many candidates there were and how many passed the whole chain.

    A candidate is identified by (qid, first_token_rank, sample); survivors = candidates not in rejected.jsonl.
    Raw-mode candidates have rank null."""
    dropped: dict[tuple, int] = defaultdict(int)
    for r in rejected:
        dropped[(str(r["qid"]), r.get("first_token_rank"))] += 1
    total: dict[tuple, int] = defaultdict(int)
    for c in candidates:
        total[(str(c["qid"]), c.get("first_token_rank"))] += 1
    return [{"qid": q, "rank": rank, "candidates": n, "survivors": n - dropped.get((q, rank), 0)}
            for (q, rank), n in sorted(total.items(), key=lambda kv: (kv[0][0], -1 if kv[0][1] is None else kv[0][1]))]


def read_jsonl_file(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def run_survival(run: Run) -> list[dict] | None:
    """The run's survival rows: the collected ``filter/path_survival.json``, else computed from the filter
    step's rejected.jsonl and the generate step's candidates.jsonl (when the cache is still there)."""
    if "filter" not in run.steps:
        return None
    saved = run.json("filter", SURVIVAL_FILE)
    if saved is not None:
        return saved["rows"]
    rejected, cands = run.file("filter", "rejected.jsonl"), run.file("generate", "candidates.jsonl")
    if rejected is None or cands is None:
        return None
    return survival_rows(read_jsonl_file(cands), read_jsonl_file(rejected))


def survival_shares(rows: list[dict]) -> dict[str, tuple[float, int]]:
    """{"overall" | "rank r": (share of questions with >= 1 path passing the whole chain, questions)}."""
    out: dict[str, tuple[float, int]] = {}
    by_q: dict[str, int] = defaultdict(int)
    by_rank: dict[Any, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for r in rows:
        by_q[r["qid"]] += r["survivors"]
        if r["rank"] is not None:
            by_rank[r["rank"]][r["qid"]] += r["survivors"]
    if by_q:
        out["overall"] = (sum(v > 0 for v in by_q.values()) / len(by_q), len(by_q))
    for rank in sorted(by_rank):
        qs = by_rank[rank]
        out[f"rank {rank}"] = (sum(v > 0 for v in qs.values()) / len(qs), len(qs))
    return out


def fig1_label(run: Run) -> str:
    mode = run.cfg("generation.mode", "?")
    name = str(run.cfg("model.name") or run.model)
    prompt = str(run.cfg("prompts.generate") or "")
    fmt = " (SERT training prompt)" if prompt.startswith("Question: {question}. Answer:") else ""
    return f"{_model_name(name)} {'top-k alternatives' if mode == 'topk_alternatives' else mode}{fmt}"


def fig1_arms(runs: list[Run]) -> dict[str, dict[str, tuple[Run, dict]]]:
    """dataset -> arm label -> (newest run, survival shares): filter steps run on the TEST split."""
    arms: dict[str, dict[str, list[tuple[Run, list[dict]]]]] = defaultdict(lambda: defaultdict(list))
    for r in runs:
        if r.cfg("dataset.split") != "test" or r.cfg("filter.input"):
            continue
        rows = run_survival(r)
        if rows:
            arms[r.dataset][fig1_label(r)].append((r, rows))
    out: dict[str, dict[str, tuple[Run, dict]]] = {}
    for ds, labelled in arms.items():
        out[ds] = {}
        for label, found in labelled.items():
            run, rows = max(found, key=lambda x: x[0].mtime)  # an arm run twice: the newest
            out[ds][label] = (run, survival_shares(rows))
    return out


def fig1_tables(arms: dict) -> list[str]:
    out = []
    for ds, labelled in sorted(arms.items()):
        cols = sorted({k for _, sh in labelled.values() for k in sh if k != "overall"})
        out.append(f"### Figure 1 — high-quality latent paths on held-out {DATASET_NAMES.get(ds, ds)} test questions\n")
        out.append("Share of questions with ≥ 1 sampled path passing the whole filter chain, overall and among each "
                   "first-token rank's paths (rank 0 = the greedy first token); questions in parentheses.\n")
        rows = []
        for label in sorted(labelled):
            run, sh = labelled[label]
            rows.append([label, run.filter or MISSING,
                         *[f"{sh[c][0]:.2f} ({sh[c][1]})" if c in sh else MISSING for c in ["overall", *cols]]])
        out.append(_md_table(["Arm", "Filter preset", "Overall", *[c.title() for c in cols]], rows))
        out.append("")
    return out


def judge_by_rank(runs: list[Run]) -> list[str]:
    """Figure 1's judge bins per first-token rank, from judge.jsonl rows that carry ``first_token_rank``."""
    out = []
    for r in sorted(runs, key=lambda r: (r.dataset, r.judge_label())):
        path = r.file("judge", "judge.jsonl") if r.cfg("judge.target") == "candidates" and "judge" in r.steps else None
        rows = read_jsonl_file(path) if path else []
        rows = [x for x in rows if x.get("first_token_rank") is not None]
        if not rows:
            continue
        ranks = sorted({x["first_token_rank"] for x in rows})
        table = []
        for rank in ranks:
            sub = [x for x in rows if x["first_token_rank"] == rank]
            qs = {x["qid"] for x in sub}
            hit = [{x["qid"] for x in sub if x.get("overall") is not None and min(int(x["overall"] // 2), 4) == b}
                   for b in range(5)]
            table.append([f"rank {rank}", str(len(qs)), *[f"{len(h) / len(qs):.2f}" for h in hit]])
        out += [f"#### {r.judge_label()} — {DATASET_NAMES.get(r.dataset, r.dataset)}: judge bins by first-token rank\n",
                _md_table(["First token", "Questions", "[0,2)", "[2,4)", "[4,6)", "[6,8)", "[8,10]"], table), ""]
    return out


def fig1_figure(arms: dict, out_dir: Path, plt: Any) -> list[Path]:
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


# ----------------------------------------------------------------------------- collecting small results
# What a study commits per run (relative to the run dir): small, enough to regenerate the report.
COLLECT_FILES = {"evaluate": ["metrics.json", "predictions.jsonl"], "filter": ["filter_stats.json"],
                 "teacher": ["teacher_summary.json"], "judge": ["judge_metrics.json", "judge.jsonl"]}


def collect(src: str | os.PathLike, dest: str | os.PathLike) -> list[Path]:
    """Copy every run under ``src`` into ``dest/<run dir relative to src>/``: run.json, .hydra/overrides.yaml,
    the small per-step files of COLLECT_FILES (read through the run dir's cache symlinks), and the filter's
    ``path_survival.json`` (Figure 1's per-question, per-rank counts, computed here from the large
    candidates/rejected files, which are not copied). Returns the destination run dirs."""
    import shutil

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


# ----------------------------------------------------------------------------- the report
def build_report(root: str | os.PathLike, out: str | os.PathLike | None = None, plots: bool = True,
                 opts: Options | None = None) -> tuple[Path, str]:
    """Write the report; returns (report path, Table II markdown)."""
    opts = opts or Options()
    root = Path(root).resolve()
    out = Path(out) if out else root / "report.md"
    runs = find_runs(root)
    t2, notes = table2(runs, opts)
    groups = judge_groups(runs)
    arms = fig1_arms(runs)
    ci = f"{100 * opts.level:g}% CI"
    lines = [f"# SERT report: {root.name}", "",
             f"{len(runs)} runs ({', '.join(f'{k}: {v}' for k, v in sorted(_count(r.stage for r in runs).items()))}). "
             f"Missing cells are shown as {MISSING}; nothing is filled in.", "",
             "## Table II — task metrics", "",
             "Acc in %, Fmt = share of well-formed outputs (the paper's strict definitions, paper III-D), Len = mean "
             "reasoning tokens, Rep = unigram repetition. Every seed of a cell is aggregated: Acc and Fmt show the "
             f"mean over seeds with a {ci} in brackets (bootstrap: questions resampled once per replicate and shared "
             f"by the seeds, seeds resampled, {opts.resamples} replicates, RNG seed {opts.boot_seed}); Len and Rep are "
             "means over seeds; seeds×n = seeds × test questions per seed. A cell without predictions.jsonl shows "
             "the metrics.json mean without a CI. Failed or unfinished cells say so. The paper column gives Table "
             "II's numbers for the same model, method and dataset.", "",
             t2, ""]
    lines += [f"- {n}" for n in notes] + ([""] if notes else [])
    lenient = lenient_table(runs, opts)
    if lenient:
        lines += ["### Strict and lenient accuracy, strict and prefix format (labelled additions)", "",
                  "Acc (lenient): when the strict extraction finds no answer, the last answer candidate in the output "
                  "(reasoning-teacher's fallback). Fmt (prefix): the output starts with reasoning and its first "
                  "\"So the answer is\" sentence has a parsable answer, whatever follows (`sert.metrics`). "
                  f"Not the paper's metrics. Same {ci} method.", "", lenient, ""]
    diffs, dnotes = paired_differences(runs, opts)
    if diffs or dnotes:
        lines += ["### Paired differences (the paper's comparisons)", "",
                  "Accuracy difference in percentage points between two arms of the same model and dataset, paired "
                  f"by seed and question (only seeds and questions present in both arms), {ci} by the same bootstrap "
                  "over the per-question differences. An interval containing 0 is inside the noise.", "",
                  *([diffs, ""] if diffs else []), *[f"- {n}" for n in dnotes], ""]
    cells_failed = cell_failures(root)
    if cells_failed:
        lines += ["## Study cells not finished", "",
                  "Cells whose driver run had a failing job (`CELL.failed.json`, written by "
                  "experiments/cpu_study/run.py; a job that failed before writing run.json shows only here).", "",
                  cells_failed, ""]
    bad = unfinished_runs(runs)
    if bad:
        lines += ["## Failed and unfinished runs", "",
                  "Runs whose run.json status is not `ok` (`running` also covers a killed process).", "", bad, ""]
    lines += ["## Filter funnel", "", funnel_table(runs), ""]
    if arms:
        lines += fig1_tables(arms)
    lines += ["## Judge (Table I prompt)", ""]
    lines += judge_tables(groups) if groups else ["No judge steps under this directory.", ""]
    lines += judge_by_rank(runs)
    if plots:
        paths, note = figures(groups, out.parent / "figures", arms)
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
    p.add_argument("--resamples", type=int, default=Options.resamples, help="bootstrap replicates (default 2000)")
    p.add_argument("--ci", type=float, default=Options.level, help="confidence level (default 0.95)")
    p.add_argument("--boot-seed", type=int, default=Options.boot_seed, help="bootstrap RNG seed (default 0)")
    p.add_argument("--collect", metavar="DEST", help="copy the small results of every run under DIR into DEST "
                   "(run.json, metrics, predictions, funnel, teacher summary, judge rows, Figure 1 counts) "
                   "and write the report there")
    args = p.parse_args(argv)
    if not Path(args.dir).is_dir():
        print(f"sert-report: {args.dir}: not a directory", file=sys.stderr)
        return 2
    if not 0 < args.ci < 1 or args.resamples < 1:
        print("sert-report: --ci must be in (0, 1) and --resamples >= 1", file=sys.stderr)
        return 2
    root = args.dir
    if args.collect:
        copied = collect(args.dir, args.collect)
        print(f"collected {len(copied)} runs into {args.collect}")
        root = args.collect
    opts = Options(resamples=args.resamples, level=args.ci, boot_seed=args.boot_seed)
    path, t2 = build_report(root, args.out, plots=not args.no_plots, opts=opts)
    print(t2)
    print(f"\nreport: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
