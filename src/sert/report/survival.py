"""Figure 1 from the filter chain: the share of held-out questions with >= 1 sampled path passing every filter,
overall and per first-token rank."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from sert.report.names import DATASET_NAMES, MISSING, md_table, model_name
from sert.report.runs import Run, read_jsonl_file

SURVIVAL_FILE = "path_survival.json"
Arms = dict[str, dict[str, tuple[Run, dict]]]


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
    scorer = run.cfg("filter.ppl_model")
    ppl = f", ppl under {model_name(str(scorer))}" if scorer else ""
    return f"{model_name(name)} {'top-k alternatives' if mode == 'topk_alternatives' else mode}{fmt}{ppl}"


def fig1_arms(runs: list[Run]) -> Arms:
    """dataset -> arm label -> (newest run, survival shares): filter steps run on the TEST split."""
    arms: dict[str, dict[str, list[tuple[Run, list[dict]]]]] = defaultdict(lambda: defaultdict(list))
    for r in runs:
        if r.cfg("dataset.split") != "test" or r.cfg("filter.input"):
            continue
        rows = run_survival(r)
        if rows:
            arms[r.dataset][fig1_label(r)].append((r, rows))
    out: Arms = {}
    for ds, labelled in arms.items():
        out[ds] = {}
        for label, found in labelled.items():
            run, rows = max(found, key=lambda x: x[0].mtime)  # an arm run twice: the newest
            out[ds][label] = (run, survival_shares(rows))
    return out


def fig1_tables(arms: Arms) -> list[str]:
    out = []
    for ds, labelled in sorted(arms.items()):
        cols = sorted({k for _, sh in labelled.values() for k in sh if k != "overall"})
        out.append(f"### Figure 1 — high-quality latent paths on held-out {DATASET_NAMES.get(ds, ds)} test questions\n")
        out.append("Share of questions with ≥ 1 sampled path passing the whole filter chain, overall and among each "
                   "first-token rank's paths (rank 0 = the greedy first token); questions in parentheses. The "
                   "perplexity filter reads each path's ppl under the model that sampled it, unless the arm names "
                   "another scorer (`filter.ppl_model`).\n")
        rows = []
        for label in sorted(labelled):
            run, sh = labelled[label]
            rows.append([label, run.filter or MISSING,
                         *[f"{sh[c][0]:.2f} ({sh[c][1]})" if c in sh else MISSING for c in ["overall", *cols]]])
        out.append(md_table(["Arm", "Filter preset", "Overall", *[c.title() for c in cols]], rows))
        out.append("")
    return out
