"""Decoding budgets: the share of outputs cut at the new-token limit, per Table II cell and per
latent-path generation step. A cut output has no answer sentence, so a budget below what a method writes
biases Acc against the methods that reason at length; a share above ``LIMIT_FLAG`` is flagged."""

from __future__ import annotations

from sert.report.names import MISSING, dataset_name, md_table, method_name, model_name
from sert.report.runs import Run

LIMIT_FLAG = 0.05  # at most 5% of the outputs may stop at the limit, else raise the budget


def cell_limit_share(runs: dict) -> tuple[float | None, int]:
    """(share of outputs with finish_reason ``length``, outputs counted) over every seed of a cell, read from
    the predictions' ``finish_reason`` (else metrics.json ``limit_hit`` weighted by ``n``); (None, 0) when
    neither was recorded (runs evaluated before the field existed)."""
    hit = total = 0.0
    for run in runs.values():
        rows = run.predictions() or []
        if rows and all("finish_reason" in r for r in rows):
            hit += sum(r["finish_reason"] == "length" for r in rows)
            total += len(rows)
            continue
        m = run.eval_metrics() or {}
        if isinstance(m.get("limit_hit"), (int, float)) and m.get("n"):
            hit += m["limit_hit"] * m["n"]
            total += m["n"]
    return (hit / total, int(total)) if total else (None, 0)


def flag(share: float | None) -> str:
    if share is None:
        return MISSING
    return f"{100 * share:.1f}%" + (f" ⚠ above {100 * LIMIT_FLAG:g}%" if share > LIMIT_FLAG else "")


def budget_table(cells: dict, order) -> str | None:
    """One row per Table II cell (``cells``: (model, method, dataset) -> {seed: run}): the evaluate budget,
    the longest training target and the share of outputs that hit the limit."""
    rows = []
    for key in sorted(cells, key=order):
        model, method, ds = key
        share, n = cell_limit_share(cells[key])
        runs = list(cells[key].values())
        decoding = [(r.steps.get("evaluate", {}).get("summary") or {}).get("decoding") or {} for r in runs]
        budgets = sorted({str(d["max_new_tokens"]) for d in decoding if d.get("max_new_tokens")})
        budget = ", ".join(budgets) or str(runs[0].cfg("evaluate.max_new_tokens") or MISSING)
        longest = max((d["longest_training_target"] for d in decoding if d.get("longest_training_target")),
                      default=None)
        rows.append([dataset_name(ds), model_name(model), method_name(method), budget,
                     MISSING if longest is None else str(longest), flag(share), str(n) if n else MISSING])
    if not rows:
        return None
    return md_table(["Dataset", "Model", "Method", "Budget (new tokens)", "Longest training target (tokens)",
                     "Outputs at the limit", "Outputs"], rows)


def generation_table(runs: list[Run]) -> str | None:
    """One row per distinct generate step: its budget and the share of sampled paths cut at the limit
    (``generate/finish_length`` over the candidates)."""
    seen: dict[str, Run] = {}
    for r in sorted(runs, key=lambda r: r.mtime):
        if "generate" in r.steps and (r.steps["generate"].get("summary") or {}).get("metrics"):
            seen[r.steps["generate"].get("key", r.rel)] = r
    rows = []
    for r in sorted(seen.values(), key=lambda r: (r.dataset, r.model, r.rel)):
        m = r.steps["generate"]["summary"]["metrics"]
        total = sum(int(m.get(f"generate/finish_{k}", 0)) for k in ("eos", "stop", "length"))
        share = int(m.get("generate/finish_length", 0)) / total if total else None
        rows.append([dataset_name(r.dataset), model_name(r.model), str(r.cfg("dataset.split") or MISSING),
                     str(r.cfg("generation.max_new_tokens") or MISSING), flag(share), str(total) if total else MISSING])
    if not rows:
        return None
    return md_table(["Dataset", "Model", "Split", "Budget (new tokens)", "Paths at the limit", "Paths"], rows)
