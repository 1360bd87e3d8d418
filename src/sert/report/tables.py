"""Table II (every seed of a cell aggregated, the teacher's row, the paper's numbers), its labelled additions
(lenient Acc, prefix Fmt, paired differences), failed cells and the filter funnel, as markdown."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from sert.artifacts import read_json
from sert.report.names import (DATASETS, FILTER_ORDER, METHODS, METRICS, MISSING, MODELS, PAPER_TEACHER,
                               dataset_name, md_table, method_name, model_name, ordered, paper_cell, rank_in)
from sert.report.runs import Run, per_seed_runs
from sert.report.stats import (ROW_FIELDS, Estimate, Options, bootstrap, estimate, fmt_by_seed, fmt_estimate,
                               question_matrix, seed_means)

COMPARISONS = [("sert", "finetune"), ("sert_rd", "rd")]  # the paper's claims: SERT vs Finetune, SERT+RD vs RD
Cells = dict[tuple[str, str, str], dict[str, list[Run]]]


def _is_method_run(r: Run) -> bool:
    steps = r.cfg("stage.steps") or []
    return r.stage in METHODS or "evaluate" in steps or "evaluate" in r.steps


def table2_cells(runs: list[Run]) -> Cells:
    """(model, method, dataset) -> {"ok": evaluated runs, "other": failed / running runs without evaluation}."""
    cells: Cells = defaultdict(lambda: {"ok": [], "other": []})
    for r in runs:
        if r.eval_metrics() is not None:
            cells[(r.model, r.stage, r.dataset)]["ok"].append(r)
        elif r.status != "ok" and _is_method_run(r):
            cells[(r.model, r.stage, r.dataset)]["other"].append(r)
    return cells


def seeded_cells(runs: list[Run]) -> dict[tuple[str, str, str], dict]:
    """(model, method, dataset) -> {seed: run} of the evaluated runs (one per seed, ``per_seed_runs``)."""
    return {k: per_seed_runs(v["ok"])[0] for k, v in table2_cells(runs).items() if v["ok"]}


def cell_order(key: tuple[str, str, str]) -> tuple:
    """Rows by dataset, model, then method, in the paper's order."""
    model, method, ds = key
    return rank_in(ds, DATASETS), rank_in(model, MODELS), model, rank_in(method, METHODS)


def status_label(r: Run) -> str:
    if r.status == "failed":
        return f"failed ({(r.error or {}).get('type') or '?'})"
    return "running/killed" if r.status == "running" else r.status


def _cell_columns(cell: dict[str, list[Run]] | None, key: tuple[str, str, str], opts: Options,
                  notes: list[str]) -> list[str]:
    """Acc, Fmt, Len, Rep, seeds×n of one Table II cell; notes about re-run seeds and unfinished runs."""
    model, method, ds = key
    label = f"{model_name(model)} {method_name(method)} {dataset_name(ds)}"
    if cell and cell["ok"]:
        chosen, dup = per_seed_runs(cell["ok"])
        notes += [f"{label}: {d}" for d in dup]
        est = {k: estimate(chosen, k, opts, (model, method, ds, k)) for k in METRICS}
        cols = [fmt_estimate(k, est[k]) for k in METRICS] + [f"{est['acc'].seeds}×{est['acc'].n}"]
        if cell["other"]:
            notes.append(f"{label}: also {len(cell['other'])} unfinished run(s) "
                         f"({', '.join(status_label(r) for r in cell['other'])}), see below")
        return cols
    if cell and cell["other"]:
        return [", ".join(sorted({status_label(r) for r in cell["other"]}))] + [MISSING] * len(METRICS)
    return [MISSING] * (len(METRICS) + 1)


def _teacher_row(name: str, datasets: list[str], teachers: dict, notes: list[str]) -> list[str]:
    row = [f"Teacher: {name}", "zero-shot CoT"]
    for ds in datasets:
        t = teachers.get((ds, name))
        row += [fmt_estimate("acc", t[0]) if t else MISSING, MISSING, MISSING, MISSING,
                f"{t[0].seeds}×{t[0].n}" if t else MISSING]
        ref = PAPER_TEACHER.get(ds)
        row.append("GPT-3.5: " + " / ".join(MISSING if v is None else f"{v:.2f}" for v in ref) if ref else MISSING)
        if t:
            notes.append(f"Teacher {name} {dataset_name(ds)}: {t[1]}")
    return row


def table2(runs: list[Run], opts: Options | None = None) -> tuple[str, list[str]]:
    """Markdown Table II (strict Acc and Fmt as the paper, every seed aggregated) and notes."""
    opts = opts or Options()
    cells = table2_cells(runs)
    teachers = teacher_rows(runs, opts)
    if not cells and not teachers:
        return "No evaluated runs (no `evaluate` step) under this directory.", []
    models = ordered({k[0] for k in cells}, MODELS)
    methods = ordered({k[1] for k in cells}, METHODS)
    datasets = ordered({k[2] for k in cells} | {ds for ds, _ in teachers}, DATASETS)
    header = ["Model", "Method"]
    for ds in datasets:
        name = dataset_name(ds)
        header += [f"{name} Acc", "Fmt", "Len", "Rep", "seeds×n", f"{name} paper (Acc / Fmt / Len / Rep)"]
    rows: list[list[str]] = []
    notes: list[str] = []
    for model in models:
        for method in methods:
            row = [model_name(model), method_name(method)]
            for ds in datasets:
                row += _cell_columns(cells.get((model, method, ds)), (model, method, ds), opts, notes)
                row.append(paper_cell(model, method, ds))
            rows.append(row)
    rows += [_teacher_row(name, datasets, teachers, notes) for name in sorted({n for _, n in teachers})]
    return md_table(header, rows), notes


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
    cells = seeded_cells(runs)
    if not cells:
        return None
    rows = []
    for key in sorted(cells, key=cell_order):
        model, method, ds = key
        est = {k: estimate(cells[key], k, opts, (model, method, ds, k)) for k in ROW_FIELDS}  # acc, fmt, lenient, prefix
        rows.append([dataset_name(ds), model_name(model), method_name(method),
                     *[fmt_estimate(k, e) for k, e in est.items()]])
    return md_table(["Dataset", "Model", "Method", "Acc (strict)", "Acc (lenient)", "Fmt (strict)", "Fmt (prefix)"],
                    rows)


def seed_table(runs: list[Run]) -> str | None:
    """Every cell run with more than one seed, seed by seed: how far the seeds spread (strict Acc and Fmt)."""
    cells = seeded_cells(runs)
    rows = []
    for key in sorted(cells, key=cell_order):
        if len(cells[key]) < 2:
            continue
        model, method, ds = key
        acc, fmt = seed_means(cells[key], "acc"), seed_means(cells[key], "fmt")
        known = [v for v in acc.values() if v is not None]
        spread = f"{100 * (max(known) - min(known)):.2f}" if known else MISSING
        rows.append([dataset_name(ds), model_name(model), method_name(method), fmt_by_seed("acc", acc), spread,
                     fmt_by_seed("fmt", fmt) if any(v is not None for v in fmt.values()) else MISSING])
    if not rows:
        return None
    return md_table(["Dataset", "Model", "Method", "Acc by seed", "Acc max − min (pp)", "Fmt by seed"], rows)


def _paired_cell(ra: dict, rb: dict, seeds: list, metric: str, key: tuple, opts: Options, label: str,
                 notes: list[str]) -> tuple[str, int | None, dict]:
    """(formatted difference of ``metric`` between arms a and b, questions compared, each seed's mean
    difference) on the common questions."""
    ma = question_matrix({s: ra[s] for s in seeds}, metric)
    mb = question_matrix({s: rb[s] for s in seeds}, metric)
    common = sorted(set(ma[1]) & set(mb[1])) if ma and mb else []
    if not common:
        return MISSING, None, {}
    qa, qb = {q: i for i, q in enumerate(ma[1])}, {q: i for i, q in enumerate(mb[1])}
    if len(common) < max(len(qa), len(qb)):
        notes.append(f"{label} ({metric}): {len(common)} questions in both arms "
                     f"(of {len(qa)} / {len(qb)}); only those are compared")
    diff = [[ma[2][i][qa[q]] - mb[2][i][qb[q]] for q in common] for i in range(len(seeds))]
    by_seed = {s: sum(d) / len(d) for s, d in zip(ma[0], diff)}
    return fmt_estimate(metric, bootstrap(diff, opts, (*key, metric))), len(common), by_seed


def paired_differences(runs: list[Run], opts: Options) -> tuple[str | None, list[str]]:
    """SERT − Finetune and SERT+RD − RD accuracy (percentage points) and Fmt (share; where both arms have it)
    on the same questions, paired by seed."""
    cells = seeded_cells(runs)
    rows, notes = [], []
    for (model, method, ds) in sorted(cells, key=lambda k: (rank_in(k[2], DATASETS), rank_in(k[0], MODELS), k[0])):
        for a, b in COMPARISONS:
            if method != a or (model, b, ds) not in cells:
                continue
            what = f"{method_name(a)} − {method_name(b)}"
            label = f"{model_name(model)} {dataset_name(ds)} {what}"
            ra, rb = cells[(model, a, ds)], cells[(model, b, ds)]
            seeds = sorted(set(ra) & set(rb), key=str)
            if not seeds:
                notes.append(f"{label}: no seed run in both arms, no paired difference")
                continue
            found = {m: _paired_cell(ra, rb, seeds, m, (model, ds, a, b), opts, label, notes)
                     for m in ("acc", "acc_lenient", "fmt")}  # (text, questions compared, per-seed difference)
            sizes = [size for _, size, _ in found.values() if size is not None]
            if not sizes:
                notes.append(f"{label}: no per-question predictions in both arms, no paired difference")
                continue
            rows.append([dataset_name(ds), model_name(model), what, *[text for text, _, _ in found.values()],
                         f"{len(seeds)}×{sizes[0]}", fmt_by_seed("acc", found["acc"][2], signed=True)])
    if not rows:
        return None, notes
    header = ["Dataset", "Model", "Comparison", "ΔAcc (pp)", "ΔAcc lenient (pp)", "ΔFmt", "seeds×n",
              "ΔAcc by seed (pp)"]
    return md_table(header, rows), notes


def cell_failures(root: Path) -> str | None:
    """Study cells whose driver run had a failing job (``CELL.failed.json``)."""
    rows = []
    for path in sorted(root.rglob("CELL.failed.json")):
        rec = read_json(path)
        bad = [j for j in rec.get("jobs", []) if j.get("returncode") != 0]
        why = {id(j): "skipped" if j.get("returncode") is None else f"exit {j['returncode']}" for j in bad}
        rows.append([str(rec.get("cell", path.parent.name)), rec.get("finished", MISSING),
                     ", ".join(f"{j['job']} ({why[id(j)]})" for j in bad) or MISSING])
    return md_table(["Cell", "Finished at", "Failed jobs"], rows) if rows else None


def unfinished_runs(runs: list[Run]) -> str | None:
    bad = [r for r in runs if r.status != "ok"]
    if not bad:
        return None
    rows = []
    for r in sorted(bad, key=lambda r: (r.model, r.stage, r.dataset, str(r.seed))):
        e = r.error or {}
        msg = " ".join(str(e.get("message") or "").split())
        rows.append([model_name(r.model), method_name(r.stage), dataset_name(r.dataset),
                     str(r.seed), status_label(r), str(e.get("step") or MISSING),
                     (msg[:200] + "…" if len(msg) > 200 else msg).replace("|", "\\|") or MISSING, r.rel])
    return md_table(["Model", "Stage", "Dataset", "Seed", "Status", "Step", "Error", "Run dir"], rows)


def funnel_table(runs: list[Run]) -> str:
    """One row per distinct filter artifact: candidates, kept after each filter, selected."""
    seen: dict[str, Run] = {}
    for r in sorted(runs, key=lambda r: r.mtime):
        if r.filter_stats() is not None:
            seen[r.steps["filter"]["key"]] = r  # one row per distinct filter artifact
    if not seen:
        return "No filter steps under this directory."
    rows = []
    for run in sorted(seen.values(), key=lambda r: (r.model, r.dataset, rank_in(r.filter, FILTER_ORDER), r.rel)):
        st = run.filter_stats() or {}
        steps = " → ".join(f"{f['filter']} {f['kept']} ({f.get('questions_with_path', MISSING)} q)"
                           for f in st.get("funnel", [])) or "(no filters)"
        rows.append([model_name(str(run.cfg("model.name") or run.model)), dataset_name(run.dataset),
                     str(run.cfg("dataset.split") or MISSING), run.filter or MISSING,
                     f"{st.get('candidates', MISSING)} ({st.get('questions', MISSING)} q)", steps,
                     str(st.get("selected", MISSING))])
    return md_table(["Model", "Dataset", "Split", "Filter preset", "Candidates", "Kept after each filter (questions)",
                     "Selected"], rows)
