"""Judge tables (Table I prompt): means per criterion and score-bin shares per judged run, grouped by what was
judged (Figure 1: candidates, Figure 3: predictions, Figure 4: selected paths), and Figure 1's bins per rank."""

from __future__ import annotations

from collections import defaultdict

from sert.report.names import (CRITERIA, FILTER_ORDER, METHODS, MISSING, MODELS, dataset_name, md_table,
                               rank_in)
from sert.report.runs import Run, newest, read_jsonl_file

JUDGE_FIGURES = {"candidates": "Figure 1 — sampling arms (judge on generated candidates)",
                 "selected": "Figure 4 — filter ablation (judge on selected paths)",
                 "predictions": "Figure 3 — reasoning quality of test outputs (judge on predictions)"}
DEFAULT_BINS = ["[0,2)", "[2,4)", "[4,6)", "[6,8)", "[8,10]"]
Groups = dict[tuple[str, str], dict[str, tuple[Run, int]]]


def judge_groups(runs: list[Run]) -> Groups:
    """(judge target, dataset) -> label -> (newest run, number of runs with that label)."""
    groups: dict[tuple[str, str], dict[str, list[Run]]] = defaultdict(lambda: defaultdict(list))
    for r in runs:
        if r.judge_metrics() is not None:
            target = "input" if r.cfg("judge.input") else str(r.cfg("judge.target", "predictions"))
            groups[(target, r.dataset)][r.judge_label()].append(r)
    return {k: {label: newest(rs) for label, rs in v.items()} for k, v in groups.items()}


def label_order(target: str, labelled: dict[str, tuple[Run, int]]) -> list[str]:
    """Paper order: filter presets in chain order, models by size then methods as in Table II."""
    def key(label: str) -> tuple:
        r = labelled[label][0]
        mode = rank_in(r.cfg("generation.mode"), ["topk_alternatives", "raw"])  # Fig. 1: Token All, Raw, SERT raw
        return (rank_in(r.model, MODELS), r.model, mode, rank_in(r.filter, FILTER_ORDER), rank_in(r.stage, METHODS),
                label)

    return sorted(labelled, key=key)


def judge_tables(groups: Groups) -> list[str]:
    out = []
    for (target, dataset), labelled in sorted(groups.items()):
        title = JUDGE_FIGURES.get(target, f"Judge on {target}")
        out.append(f"### {title}: {dataset_name(dataset)}\n")
        means, bins_rows, notes = [], [], []
        bins: list[str] = []
        for label in label_order(target, labelled):
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
        out.append(md_table(["Run", "Scored/n", *[c.replace("_", " ").title() for c in CRITERIA]], means))
        what = ("share of questions with ≥ 1 output in the bin (overall score)" if target == "candidates"
                else "share of scored outputs in the bin (overall score)")
        out.append(f"\nScore bins — {what}:\n")
        out.append(md_table(["Run", *(bins or DEFAULT_BINS)], bins_rows))
        out += [f"\n- {n}" for n in notes]
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
        out += [f"#### {r.judge_label()} — {dataset_name(r.dataset)}: judge bins by first-token rank\n",
                md_table(["First token", "Questions", *DEFAULT_BINS], table), ""]
    return out
