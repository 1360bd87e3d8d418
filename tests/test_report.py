"""sert-report on synthetic run directories (as the stages write them) and on a real CLI multirun."""

from __future__ import annotations

import builtins
import json
import os
import time
from pathlib import Path

import pytest
from conftest import run_cli

from sert.report import MISSING, PAPER_TABLE2, build_report, find_runs, main

CRIT = ["coherence", "relevance", "logical_consistency", "completeness", "overall"]


def make_run(root: Path, name: str, stage: str, model: str, dataset: str, *, metrics: dict | None = None,
             funnel: dict | None = None, judge: dict | None = None, config: dict | None = None,
             choices: dict | None = None, mtime: float | None = None) -> Path:
    """A run dir like sert.pipeline.Manifest writes: run.json + step dirs (here real dirs, not symlinks)."""
    run = root / name
    steps = []
    for step, fname, content in (("filter", "filter_stats.json", funnel), ("evaluate", "metrics.json", metrics),
                                 ("judge", "judge_metrics.json", judge)):
        if content is None:
            continue
        d = root / "cache" / step / f"{name.replace('/', '_')}-{step}"
        d.mkdir(parents=True)
        (d / fname).write_text(json.dumps(content))
        steps.append({"step": step, "key": d.name, "cached": False, "dir": str(d), "files": [fname], "seconds": 1.0,
                      "summary": {"metrics": content} if step == "evaluate" else {}})
    run.mkdir(parents=True)
    (run / "run.json").write_text(json.dumps({
        "stage": stage, "choices": {"model": model, "dataset": dataset, "stage": stage, **(choices or {})},
        "config": config or {}, "steps": steps}))
    if mtime is not None:
        os.utime(run / "run.json", (mtime, mtime))
    return run


def eval_metrics(acc: float, fmt: float | None = 0.9, length: float | None = 100.0, rep: float | None = 0.5) -> dict:
    return {"acc": acc, "fmt": fmt, "len": length, "rep": rep, "n": 10}


def judge_metrics(base: float) -> dict:
    return {"n": 10, "scored": 9, "unparsable": 1, "failed": 0, "questions": 5,
            "mean": {c: base + i * 0.1 for i, c in enumerate(CRIT)}, "bins": ["[0,2)", "[2,4)", "[4,6)", "[6,8)", "[8,10]"],
            "distribution": {c: [0.1, 0.2, 0.3, 0.3, 0.1] for c in CRIT},
            "question_coverage": {c: [0.2, 0.4, 0.6, 0.4, 0.2] for c in CRIT}}


def _row(text: str, model: str, method: str) -> list[str]:
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if cells[:2] == [model, method]:
            return cells
    raise AssertionError(f"no row {model} {method} in\n{text}")


@pytest.fixture
def grid(tmp_path: Path) -> Path:
    """2 models x 2 methods x 2 datasets, every cell a distinct accuracy."""
    root = tmp_path / "sweep"
    i = 0
    for model in ("gpt2", "gpt2-medium"):
        for method in ("finetune", "sert"):
            for ds in ("commonsense_qa", "strategy_qa"):
                i += 1
                m = eval_metrics(i / 100) if method == "sert" else {"acc": i / 100, "fmt": None, "len": None,
                                                                     "rep": None, "n": 10}
                make_run(root, f"{i}_{model}_{method}_{ds}", method, model, ds, metrics=m)
    return root


def test_table2_every_cell(grid: Path):
    path, t2 = build_report(grid, plots=False)
    # StrategyQA columns come before CommonsenseQA (paper order)
    assert t2.index("StrategyQA Acc") < t2.index("CommonsenseQA Acc")
    # run 2 = gpt2/finetune/strategy_qa acc 0.02 -> "2.00" (percent); run 1 its CommonsenseQA twin
    assert _row(t2, "GPT-2", "Finetune")[2:7] == ["2.00", MISSING, MISSING, MISSING, "54.00 / — / — / —"]
    assert _row(t2, "GPT-2", "Finetune")[7] == "1.00"
    sert = _row(t2, "GPT-2-medium", "SERT")  # runs 7 (csqa) and 8 (sqa)
    assert sert[2:6] == ["8.00", "0.90", "100.00", "0.50"] and sert[7:11] == ["7.00", "0.90", "100.00", "0.50"]
    assert sert[6] == "55.17 / 0.89 / 149.11 / 0.49" and sert[11] == "23.10 / 0.82 / 160.26 / 0.56"
    rows = [ln for ln in t2.splitlines() if ln.startswith("| GPT")]
    assert len(rows) == 4  # Model x Method
    assert path.read_text().count("| GPT") >= 4


def test_missing_cells_are_shown_missing(grid: Path):
    (grid / "7_gpt2-medium_sert_commonsense_qa" / "run.json").unlink()
    make_run(grid, "x_gpt2-large_rd", "rd", "gpt2-large", "strategy_qa", metrics=eval_metrics(0.5))
    _, t2 = build_report(grid, plots=False)
    sert = _row(t2, "GPT-2-medium", "SERT")
    assert sert[7:11] == [MISSING] * 4 and sert[11] == "23.10 / 0.82 / 160.26 / 0.56"  # paper ref stays
    # a model/method seen once opens a full row block: every other cell of it is missing, not filled
    large_rd = _row(t2, "GPT-2-large", "RD")
    assert large_rd[2:6] == ["50.00", "0.90", "100.00", "0.50"] and large_rd[7:11] == [MISSING] * 4
    assert _row(t2, "GPT-2-large", "Finetune")[2:6] == [MISSING] * 4
    assert _row(t2, "GPT-2", "RD")[2:6] == [MISSING] * 4 and _row(t2, "GPT-2", "RD")[6] == "52.69 / 0.92 / 116.23 / 0.52"


def test_newest_run_wins_and_is_noted(tmp_path: Path):
    root = tmp_path / "runs"
    now = time.time()
    make_run(root, "old", "sert", "gpt2", "strategy_qa", metrics=eval_metrics(0.10), mtime=now - 100)
    make_run(root, "new", "sert", "gpt2", "strategy_qa", metrics=eval_metrics(0.20), mtime=now)
    path, t2 = build_report(root, plots=False)
    assert _row(t2, "GPT-2", "SERT")[2] == "20.00"
    assert "2 runs, newest shown" in path.read_text() and str(root / "new") in path.read_text()


def test_paper_table_transcription():
    """Spot checks against the paper's Table II text."""
    assert PAPER_TABLE2[("gpt2-large", "sert_rd", "commonsense_qa")] == (26.03, 1.00, 94.18, 0.47)
    assert PAPER_TABLE2[("gpt2-medium", "rd", "strategy_qa")] == (52.69, 0.85, 181.06, 0.56)
    assert PAPER_TABLE2[("gpt2", "finetune", "commonsense_qa")] == (20.80, None, None, None)
    assert len(PAPER_TABLE2) == 24


def _judged_sweep(root: Path) -> None:
    cfg = lambda target, **kw: {"judge": {"target": target, "input": None}, **kw}  # noqa: E731
    for i, f in enumerate(["full", "raw", "pattern"]):
        funnel = {"candidates": 25, "questions": 1, "selected": 1, "order": [],
                  "funnel": [{"filter": "pattern", "in": 25, "kept": 10 - i, "dropped": 15 + i, "questions_with_path": 1}]}
        make_run(root, f"f{i}", "judge", "gpt2-large", "commonsense_qa", funnel=funnel, judge=judge_metrics(1 + i),
                 config=cfg("selected"), choices={"filter": f})
    for i, mode in enumerate(["topk_alternatives", "raw"]):
        make_run(root, f"s{i}", "judge", "gpt2-large", "commonsense_qa", judge=judge_metrics(3 + i),
                 config=cfg("candidates", generation={"mode": mode}))
    for i, method in enumerate(["rd", "sert_rd"]):
        make_run(root, f"p{i}", method, "gpt2", "commonsense_qa", metrics=eval_metrics(0.2), judge=judge_metrics(5 + i),
                 config=cfg("predictions"))


def test_funnel_and_judge_tables(tmp_path: Path):
    root = tmp_path / "sweep"
    _judged_sweep(root)
    text = build_report(root, plots=False)[0].read_text()
    assert "pattern 10 (1 q)" in text and "pattern 8 (1 q)" in text  # one funnel row per filter artifact
    fig4 = text[text.index("Figure 4"):text.index("Figure 4") + 2000]
    # filter presets in chain order raw, pattern, full; means as written by the judge step
    assert fig4.index("filter=raw") < fig4.index("filter=pattern") < fig4.index("filter=full")
    assert "| GPT-2-large filter=raw | 9/10 | 2.00 | 2.10 | 2.20 | 2.30 | 2.40 |" in text
    assert "| GPT-2-large raw | 0.20 | 0.40 | 0.60 | 0.40 | 0.20 |" in text  # Fig. 1 uses question coverage
    assert "| GPT-2 SERT+RD | 9/10 | 6.00 |" in text


def test_figures_written(tmp_path: Path):
    pytest.importorskip("matplotlib")
    root = tmp_path / "sweep"
    _judged_sweep(root)
    text = build_report(root)[0].read_text()
    for name in ("fig1_sampling_commonsense_qa", "fig3_criteria_commonsense_qa", "fig4_filter_ablation_commonsense_qa"):
        png = root / "figures" / f"{name}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and f"figures/{name}.png" in text


def test_figures_skipped_without_matplotlib(tmp_path: Path, monkeypatch):
    root = tmp_path / "sweep"
    _judged_sweep(root)
    real_import = builtins.__import__

    def no_mpl(name, *a, **k):
        if name.startswith("matplotlib"):
            raise ImportError("no matplotlib")
        return real_import(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_mpl)
    text = build_report(root)[0].read_text()
    assert "Figures skipped: matplotlib is not installed" in text and not (root / "figures").exists()


def test_cli_prints_table(grid: Path, capsys):
    assert main([str(grid), "--no-plots"]) == 0
    out = capsys.readouterr().out
    assert "| GPT-2-medium | SERT | 8.00 |" in out and "report.md" in out
    assert main([str(grid / "nope")]) == 2


def test_report_of_a_real_multirun(tmp_path: Path, csqa_files):
    """A CLI multirun's dirs are read (choices, stage, step dirs through the run dir symlinks)."""
    data, split = csqa_files
    out = tmp_path / "out"
    run_cli("-m", "stage=data", "model=tiny,gpt2", f"dataset.path={data}", f"dataset.split_file={split}",
            "logger=none", out=out)
    (sweep,) = list((out / "multiruns").glob("*/*"))
    runs = find_runs(sweep)
    assert sorted(r.model for r in runs) == ["gpt2", "tiny"] and {r.stage for r in runs} == {"data"}
    assert all((r.dir / "data").is_symlink() for r in runs)
    text = build_report(sweep)[0].read_text()
    assert "2 runs (data: 2)" in text and "No evaluated runs" in text
