"""Report additions for a study v2: the minimum detectable difference (hand-computed) and the share of outputs cut at
the decoding limit per cell, flagged above 5%."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from sert.report.build import build_report
from sert.report.power import mdd, paired_se, z_sum
from test_report import eval_metrics, make_run, preds


def test_mdd_hand_computed():
    assert z_sum() == pytest.approx(1.959964 + 0.841621, abs=1e-5)
    # one seed, 100 questions: 12 where only arm a is right, 8 where only b is right, 80 concordant
    diff = [[1.0] * 12 + [-1.0] * 8 + [0.0] * 80]
    # D = 0.04, p_disc = 0.20, var = 0.20 - 0.04^2 = 0.1984, SE = sqrt(0.1984 / 100) = 0.044542
    assert paired_se(diff) == pytest.approx(math.sqrt(0.1984 / 100))
    assert mdd(diff) == pytest.approx(0.12479, abs=1e-5)  # 12.48 percentage points (docs/study-design.md)
    # a second seed that disagrees adds the seed spread: seed means 0.04 and 0.14, var_s = 0.005 (ddof 1) / 2
    two = diff + [[1.0] * 14 + [0.0] * 86]
    per_q = [1.0] * 12 + [0.0] * 2 + [-0.5] * 6 + [0.0] * 80  # (1+1)/2, (-1+1)/2, (-1+0)/2, 0
    mean_q = sum(per_q) / 100
    var_q = sum((x - mean_q) ** 2 for x in per_q) / 100
    assert paired_se(two) == pytest.approx(math.sqrt(var_q / 100 + 0.005 / 2))
    assert mdd([[0.0] * 10] * 3) == 0.0  # identical arms


def test_limit_share_per_cell_flagged(tmp_path: Path):
    root = tmp_path / "study"
    rows = preds([True] * 10, fmt=[True] * 10)
    for i, r in enumerate(rows):
        r["finish_reason"] = "length" if i < 1 else "eos"  # 1 of 10 cut: 10%, above the 5% flag
    make_run(root, "rd_s0", "rd", "gpt2", "strategy_qa", seed=0, predictions=rows,
             metrics={"acc": 1.0, "fmt": 1.0, "len": 10, "rep": 0.1, "n": 10, "limit_hit": 0.1})
    ok = preds([True] * 20, fmt=[True] * 20)
    for r in ok:
        r["finish_reason"] = "eos"
    make_run(root, "sert_s0", "sert", "gpt2", "strategy_qa", seed=0, predictions=ok,
             metrics={"acc": 1.0, "fmt": 1.0, "len": 10, "rep": 0.1, "n": 20, "limit_hit": 0.0})
    make_run(root, "finetune_s0", "finetune", "gpt2", "strategy_qa", seed=0, predictions=preds([True] * 10),
             metrics=eval_metrics(1.0))  # a run from before finish_reason was recorded
    text = build_report(root, plots=False)[0].read_text()
    table = text[text.index("### Decoding budgets"):].split("\n#", 1)[0]
    assert "| RD | " in table and "| 10.0% ⚠ above 5% | 10 |" in table
    assert "| SERT | " in table and "| 0.0% | 20 |" in table
    assert next(ln for ln in table.splitlines() if "| Finetune |" in ln).endswith("| — | — |")  # not recorded


def test_base_model_row_and_option_likelihood_column(tmp_path: Path):
    root = tmp_path / "study"
    rows = preds([False] * 10, fmt=[False] * 10)
    for i, r in enumerate(rows):
        r["correct_option"] = i < 6  # the format hides it: 0% strict, 60% by option likelihood
    make_run(root, "base_s0", "evaluate", "gpt2", "strategy_qa", seed=0, predictions=rows,
             config={"stage": {"name": "evaluate", "evaluate_model": "base"}, "evaluate": {"checkpoint": None}},
             metrics={**eval_metrics(0.0), "acc_option": 0.6})
    make_run(root, "ckpt_s0", "evaluate", "gpt2", "strategy_qa", seed=0, predictions=preds([True] * 10),
             config={"evaluate": {"checkpoint": "/some/checkpoint"}}, metrics=eval_metrics(1.0))  # not the base model
    make_run(root, "sert_s0", "sert", "gpt2", "strategy_qa", seed=0, predictions=preds([True] * 10, fmt=[True] * 10),
             metrics=eval_metrics(1.0))
    text = build_report(root, plots=False)[0].read_text()
    t2 = text[:text.index("### ")]
    lines = [ln for ln in t2.splitlines() if ln.startswith("| GPT-2 |")]
    assert [ln.split("|")[2].strip() for ln in lines] == ["Base (zero-shot)", "SERT", "evaluate"]  # base row first
    assert lines[0].split("|")[3].strip() == "0.00 [0.00, 0.00]"
    lenient = text[text.index("### Strict, lenient"):].split("\n#", 1)[0]
    base = next(ln for ln in lenient.splitlines() if "| Base (zero-shot) |" in ln)
    assert base.rstrip(" |").split("|")[-1].strip().startswith("60.00 [")  # Acc (option likelihood), bootstrapped
