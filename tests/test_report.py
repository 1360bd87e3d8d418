"""sert-report on synthetic run directories (as the stages write them) and on a real CLI multirun."""

from __future__ import annotations

import builtins
import json
import os
import time
from collections import defaultdict
from pathlib import Path

import pytest
from conftest import run_cli

from sert.report import MISSING, PAPER_TABLE2, build_report, find_runs, main

CRIT = ["coherence", "relevance", "logical_consistency", "completeness", "overall"]


def make_run(root: Path, name: str, stage: str, model: str, dataset: str, *, metrics: dict | None = None,
             funnel: dict | None = None, judge: dict | None = None, config: dict | None = None,
             choices: dict | None = None, mtime: float | None = None, predictions: list[dict] | None = None,
             teacher: dict | None = None, seed: int | None = None, status: str | None = None,
             error: dict | None = None, extra_files: dict | None = None, link: bool = False) -> Path:
    """A run dir like sert.pipeline.Manifest writes: run.json + step dirs in a cache (symlinked when ``link``).
    ``extra_files``: {(step, file name): text} written into the step dirs."""
    run = root / name
    run.mkdir(parents=True)
    files: dict[str, dict[str, str]] = defaultdict(dict)
    for step, fname, content in (("filter", "filter_stats.json", funnel), ("evaluate", "metrics.json", metrics),
                                 ("judge", "judge_metrics.json", judge), ("teacher", "teacher_summary.json", teacher)):
        if content is not None:
            files[step][fname] = json.dumps(content)
    if predictions is not None:
        files["evaluate"]["predictions.jsonl"] = "".join(json.dumps(r) + "\n" for r in predictions)
    for (step, fname), text in (extra_files or {}).items():
        files[step][fname] = text
    steps = []
    for step, named in files.items():
        d = root / "cache" / step / f"{name.replace('/', '_')}-{step}"
        d.mkdir(parents=True)
        for fname, text in named.items():
            (d / fname).write_text(text)
        if link:
            (run / step).symlink_to(d, target_is_directory=True)
        summary = {"metrics": metrics} if step == "evaluate" else {}
        steps.append({"step": step, "key": d.name, "cached": False, "dir": str(d), "files": sorted(named),
                      "seconds": 1.0, "summary": summary})
    cfg = dict(config or {})
    if seed is not None:
        cfg["seed"] = seed
    manifest = {"stage": stage, "choices": {"model": model, "dataset": dataset, "stage": stage, **(choices or {})},
                "config": cfg, "steps": steps}
    if status is not None:
        manifest["status"] = status
    if error is not None:
        manifest["error"] = error
    (run / "run.json").write_text(json.dumps(manifest))
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
    # metrics.json only (no predictions): the value without a CI, 1 seed x 10 questions
    assert _row(t2, "GPT-2", "Finetune")[2:8] == ["2.00", MISSING, MISSING, MISSING, "1×10", "54.00 / — / — / —"]
    assert _row(t2, "GPT-2", "Finetune")[8] == "1.00"
    sert = _row(t2, "GPT-2-medium", "SERT")  # runs 7 (csqa) and 8 (sqa)
    assert sert[2:6] == ["8.00", "0.90", "100.00", "0.50"] and sert[8:12] == ["7.00", "0.90", "100.00", "0.50"]
    assert sert[7] == "55.17 / 0.89 / 149.11 / 0.49" and sert[13] == "23.10 / 0.82 / 160.26 / 0.56"
    rows = [ln for ln in t2.splitlines() if ln.startswith("| GPT")]
    assert len(rows) == 4  # Model x Method
    assert path.read_text().count("| GPT") >= 4


def test_missing_cells_are_shown_missing(grid: Path):
    (grid / "7_gpt2-medium_sert_commonsense_qa" / "run.json").unlink()
    make_run(grid, "x_gpt2-large_rd", "rd", "gpt2-large", "strategy_qa", metrics=eval_metrics(0.5))
    _, t2 = build_report(grid, plots=False)
    sert = _row(t2, "GPT-2-medium", "SERT")
    assert sert[8:12] == [MISSING] * 4 and sert[13] == "23.10 / 0.82 / 160.26 / 0.56"  # paper ref stays
    # a model/method seen once opens a full row block: every other cell of it is missing, not filled
    large_rd = _row(t2, "GPT-2-large", "RD")
    assert large_rd[2:6] == ["50.00", "0.90", "100.00", "0.50"] and large_rd[8:12] == [MISSING] * 4
    assert _row(t2, "GPT-2-large", "Finetune")[2:6] == [MISSING] * 4
    assert _row(t2, "GPT-2", "RD")[2:6] == [MISSING] * 4 and _row(t2, "GPT-2", "RD")[7] == "52.69 / 0.92 / 116.23 / 0.52"


def test_rerun_of_a_seed_newest_wins_and_is_noted(tmp_path: Path):
    root = tmp_path / "runs"
    now = time.time()
    make_run(root, "old", "sert", "gpt2", "strategy_qa", metrics=eval_metrics(0.10), mtime=now - 100, seed=1)
    make_run(root, "new", "sert", "gpt2", "strategy_qa", metrics=eval_metrics(0.20), mtime=now, seed=1)
    path, t2 = build_report(root, plots=False)
    assert _row(t2, "GPT-2", "SERT")[2] == "20.00" and _row(t2, "GPT-2", "SERT")[6] == "1×10"
    assert "seed 1: 2 runs, newest used" in path.read_text() and "(new)" in path.read_text()


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


# ----------------------------------------------------------------------------- seeds, CIs, paired differences
def preds(correct: list[bool], lenient: list[bool] | None = None, fmt: list[bool] | None = None) -> list[dict]:
    """predictions.jsonl rows as evaluate writes them (q0, q1, ...)."""
    lenient = lenient or correct
    return [{"qid": f"q{i}", "output": "x", "correct": c, "correct_lenient": lv,
             "format_ok": None if fmt is None else fmt[i], "format_prefix": None if fmt is None else fmt[i]}
            for i, (c, lv) in enumerate(zip(correct, lenient))]


def seeded_cell(root: Path, method: str, per_seed: list[list[bool]], model: str = "gpt2", ds: str = "strategy_qa",
                fmt: bool = True, **kw) -> None:
    for seed, correct in enumerate(per_seed):
        acc = sum(correct) / len(correct)
        make_run(root, f"{method}_{model}_{ds}_s{seed}", method, model, ds, seed=seed,
                 metrics=eval_metrics(acc) if fmt else {"acc": acc, "fmt": None, "len": None, "rep": None,
                                                        "n": len(correct)},
                 predictions=preds(correct, fmt=[True] * len(correct) if fmt else None), **kw)


def _ci(cell: str) -> tuple[float, float, float]:
    mean, rest = cell.split(" [")
    lo, hi = rest.rstrip("]").split(", ")
    return float(mean), float(lo), float(hi)


def test_bootstrap_hand_checked():
    from sert.report import Options, bootstrap
    opts = Options(resamples=2000)
    e = bootstrap([[1.0] * 10], opts, "a")
    assert (e.mean, e.lo, e.hi, e.seeds, e.n) == (1.0, 1.0, 1.0, 1, 10)  # no variation, no interval
    # one seed, p = 0.5 on 100 questions: the binomial standard error is 0.05 -> 95% CI about 0.5 +- 0.098
    e = bootstrap([[1.0, 0.0] * 50], opts, "b")
    assert e.mean == 0.5 and 0.38 < e.lo < 0.42 and 0.58 < e.hi < 0.62
    # three seeds that disagree (0.3, 0.5, 0.7 on the same 100 questions): seed resampling widens the interval
    three = [[1.0] * k + [0.0] * (100 - k) for k in (30, 50, 70)]
    w = bootstrap(three, opts, "c")
    assert w.mean == 0.5 and w.seeds == 3 and w.n == 100 and (w.hi - w.lo) > (e.hi - e.lo)
    assert bootstrap(three, opts, "c") == w  # fixed RNG: reproducible
    assert bootstrap(three, Options(resamples=2000, level=0.5), "c").hi < w.hi  # the level is a knob


def test_all_seeds_aggregated_with_ci_and_n(tmp_path: Path):
    root = tmp_path / "study"
    seeded_cell(root, "sert", [[True] * 5 + [False] * 5, [True] * 6 + [False] * 4, [True] * 7 + [False] * 3])
    path, t2 = build_report(root, plots=False)
    row = _row(t2, "GPT-2", "SERT")
    mean, lo, hi = _ci(row[2])
    assert mean == 60.00 and lo < 60 < hi and row[6] == "3×10"  # mean of 50, 60, 70 %; 3 seeds x 10 questions
    assert _ci(row[3]) == (1.0, 1.0, 1.0)  # Fmt: every output well formed
    assert row[4] == "100.00" and row[5] == "0.50"  # Len, Rep: means over seeds
    assert build_report(root, plots=False)[0].read_text() == path.read_text()  # reproducible report


def test_paired_differences(tmp_path: Path):
    root = tmp_path / "study"
    base = [[True] * 3 + [False] * 7, [True] * 4 + [False] * 6]
    seeded_cell(root, "finetune", base, fmt=False)
    seeded_cell(root, "sert", base)  # identical answers: difference 0, CI [0, 0]
    seeded_cell(root, "rd", [[False] * 10, [False] * 10])
    seeded_cell(root, "sert_rd", [[True] * 10, [True] * 5 + [False] * 5])  # +100 and +50 pp -> mean 75
    text = build_report(root, plots=False)[0].read_text()
    diffs = text[text.index("### Paired differences"):]
    # ΔFmt: — because the label-only Finetune has no Fmt
    assert ("| StrategyQA | GPT-2 | SERT − Finetune | 0.00 [0.00, 0.00] | 0.00 | 0.00 [0.00, 0.00] | — | — | 2×10 | "
            "s0 +0.00, s1 +0.00 |") in diffs  # identical arms: MDD 0; no option likelihood recorded: —
    line = next(ln for ln in diffs.splitlines() if "SERT+RD − RD" in ln)
    mean, lo, hi = _ci(line.split("|")[4].strip())
    # seed 0 gains 100 pp on every question; seed 1 gains 50 pp (5 of 10): the draws that take seed 0 twice give 100
    assert mean == 75.00 and 0 <= lo < 75 and hi == 100.00 and line.rstrip(" |").endswith("2×10 | s0 +100.00, s1 +50.00")
    # MDD by hand (sert.report.power): per-question seed means 1 (x5) and 0.5 (x5): var_q 0.0625 / 10 questions;
    # seed means 1.0 and 0.5: var_s 0.125 / 2 seeds; SE = sqrt(0.00625 + 0.0625) = 0.26220; x 2.80158 = 73.46 pp
    assert line.split("|")[5].strip() == "73.46"


def test_seed_by_seed_table(tmp_path: Path):
    root = tmp_path / "study"
    seeded_cell(root, "sert", [[True] * 5 + [False] * 5, [True] * 8 + [False] * 2, [True] * 6 + [False] * 4])
    seeded_cell(root, "rd", [[True] * 10])  # one seed: no row
    text = build_report(root, plots=False)[0].read_text()
    seeds = text[text.index("### Seed by seed"):].split("\n#", 1)[0]
    assert "| StrategyQA | GPT-2 | SERT | s0 50.00, s1 80.00, s2 60.00 | 30.00 | s0 1.00, s1 1.00, s2 1.00 |" in seeds
    assert "| RD |" not in seeds


def test_paired_format_difference(tmp_path: Path):
    root = tmp_path / "study"
    for method, fmt in (("rd", [True] * 2 + [False] * 8), ("sert_rd", [True] * 6 + [False] * 4)):
        make_run(root, f"{method}_s0", method, "gpt2", "strategy_qa", seed=0, metrics=eval_metrics(0.5),
                 predictions=preds([True] * 5 + [False] * 5, fmt=fmt))
    text = build_report(root, plots=False)[0].read_text()
    line = next(ln for ln in text.splitlines() if "| SERT+RD − RD |" in ln)
    mean, lo, hi = _ci(line.split("|")[7].strip())
    assert mean == 0.40 and lo < 0.40 < hi  # 6 of 10 well-formed against 2 of 10, same questions


def test_paired_differences_use_common_seeds_and_questions(tmp_path: Path):
    root = tmp_path / "study"
    seeded_cell(root, "finetune", [[True] * 10], fmt=False)  # seed 0 only, q0..q9
    make_run(root, "sert_s0", "sert", "gpt2", "strategy_qa", seed=0, metrics=eval_metrics(0.5),
             predictions=preds([False] * 4))  # q0..q3 only
    make_run(root, "sert_s1", "sert", "gpt2", "strategy_qa", seed=1, metrics=eval_metrics(0.5),
             predictions=preds([True] * 4))  # no finetune seed 1: not paired
    text = build_report(root, plots=False)[0].read_text()
    assert "| StrategyQA | GPT-2 | SERT − Finetune | -100.00 [-100.00, -100.00] |" in text
    assert "1×4" in text and "4 questions in both arms (of 4 / 10)" in text


def test_failed_and_running_cells_are_shown(tmp_path: Path):
    root = tmp_path / "study"
    seeded_cell(root, "sert", [[True] * 10])
    err = {"type": "ValueError", "message": "filter.order names ['x'], which are not filters", "step": "filter"}
    make_run(root, "rd_failed", "rd", "gpt2", "strategy_qa", seed=0, status="failed", error=err)
    make_run(root, "ft_running", "finetune", "gpt2", "strategy_qa", seed=0, status="running")
    make_run(root, "sert_failed_s1", "sert", "gpt2", "strategy_qa", seed=1, status="failed",
             error={"type": "RuntimeError", "message": "out of memory", "step": "self_train"})
    text = build_report(root, plots=False)[0].read_text()
    t2 = text[:text.index("## Failed")]
    assert _row(t2, "GPT-2", "RD")[2] == "failed (ValueError)" and _row(t2, "GPT-2", "RD")[3:7] == [MISSING] * 4
    assert _row(t2, "GPT-2", "Finetune")[2] == "running/killed"
    assert _row(t2, "GPT-2", "SERT")[2] == "100.00 [100.00, 100.00]"  # the ok seed; the failed one is noted
    assert "also 1 unfinished run(s) (failed (RuntimeError))" in text
    failed = text[text.index("## Failed"):]
    assert "| GPT-2 | RD | StrategyQA | 0 | failed (ValueError) | filter | filter.order names ['x'], which are not filters |" in failed
    assert "out of memory" in failed and "running/killed" in failed


def test_teacher_row_and_lenient_table(tmp_path: Path):
    root = tmp_path / "study"
    teacher = {"samples": 200, "questions": 200, "metrics": {"teacher/acc": 0.6}}
    seeded_cell(root, "rd", [[True, False, False, False]], teacher=teacher,
                config={"teacher": {"model": "qwen2.5-coder-1.5b-instruct", "input": None},
                        "dataset": {"split": "train"}})
    make_run(root, "sert_len", "sert", "gpt2", "strategy_qa", seed=0, metrics=eval_metrics(0.25),
             predictions=preds([True, False, False, False], lenient=[True, True, True, False], fmt=[True] * 4))
    text = build_report(root, plots=False)[0].read_text()
    row = _row(text, "Teacher: qwen2.5-coder-1.5b-instruct", "zero-shot CoT")
    mean, lo, hi = _ci(row[2])
    assert mean == 60.00 and lo < 60 < hi and row[6] == "1×200" and row[7] == "GPT-3.5: 53.45 / — / 76.77 / 0.36"
    assert "200 train-split samples each" in text
    lenient = text[text.index("### Strict, lenient"):]
    assert "| StrategyQA | GPT-2 | SERT | 25.00 [0.00, 75.00] | 75.00 [" in lenient


def test_collect_copies_small_results_and_report_needs_no_cache(tmp_path: Path, capsys):
    import shutil
    root = tmp_path / "sweep"
    cands = [{"qid": "q0", "first_token_rank": r, "sample": s, "text": "t" * 30} for r in range(2) for s in range(2)]
    rejected = [{**cands[0], "dropped_by": "pattern"}, {**cands[1], "dropped_by": "length"}]  # rank 0 all dropped
    extra = {("generate", "candidates.jsonl"): "".join(json.dumps(c) + "\n" for c in cands),
             ("filter", "rejected.jsonl"): "".join(json.dumps(c) + "\n" for c in rejected)}
    source = str(root / "cache" / "generate" / "k" / "candidates.jsonl")
    seeded_cell(root, "sert", [[True, False]], link=True, extra_files=extra,
                funnel={"candidates": 4, "questions": 1, "selected": 1, "funnel": [], "source": source},
                config={"dataset": {"split": "test"}, "generation": {"mode": "topk_alternatives"},
                        "model": {"name": "gpt2", "name_or_path": str(Path.home() / "models" / "gpt2")},
                        "paths": {"output_dir": str(root), "cache_dir": str(root / "cache")}})
    before = build_report(root, plots=False)[1]
    dest = tmp_path / "results" / "cell"
    assert main([str(root), "--collect", str(dest), "--no-plots"]) == 0
    shutil.rmtree(root / "cache")  # the report must not need the cache (or checkpoints)
    copied = dest / "sert_gpt2_strategy_qa_s0"
    assert sorted(p.name for p in copied.rglob("*") if p.is_file()) == [
        "filter_stats.json", "metrics.json", "path_survival.json", "predictions.jsonl", "run.json"]
    assert not any(p.is_symlink() for p in copied.iterdir())
    # no machine paths in what a study commits: the cache, the output dir and the home dir become placeholders
    collected = {p.name: p.read_text() for p in copied.rglob("*.json")}
    assert not [n for n, t in collected.items() if str(tmp_path) in t or str(Path.home()) + "/" in t]
    assert json.loads(collected["filter_stats.json"])["source"] == "<cache>/generate/k/candidates.jsonl"
    cfg = json.loads(collected["run.json"])["config"]
    assert cfg["model"]["name_or_path"] == "~/models/gpt2" and cfg["paths"]["output_dir"] == "<output>"
    text = (dest / "report.md").read_text()
    assert build_report(dest, plots=False)[1] == before
    # Figure 1 from the filter chain: question q0 keeps a path at rank 1 only
    assert "| GPT-2 top-k alternatives | — | 1.00 (1) | 0.00 (1) | 1.00 (1) |" in text


def test_survival_shares_hand_computed():
    from sert.report import survival_rows, survival_shares
    cands = [{"qid": q, "first_token_rank": r, "sample": s} for q in ("a", "b") for r in (0, 1) for s in (0, 1)]
    rejected = [c for c in cands if not (c["qid"] == "a" and c["first_token_rank"] == 1 and c["sample"] == 0)]
    rows = survival_rows(cands, rejected)  # only a/rank 1/sample 0 survives
    assert {(r["qid"], r["rank"]): r["survivors"] for r in rows} == {("a", 0): 0, ("a", 1): 1, ("b", 0): 0, ("b", 1): 0}
    assert survival_shares(rows) == {"overall": (0.5, 2), "rank 0": (0.0, 2), "rank 1": (0.5, 2)}
    raw = survival_rows([{"qid": "a", "first_token_rank": None, "sample": 0}], [])
    assert survival_shares(raw) == {"overall": (1.0, 1)}


def test_cli_ci_options(grid: Path):
    assert main([str(grid), "--no-plots", "--ci", "1.5"]) == 2
    assert main([str(grid), "--no-plots", "--resamples", "100", "--ci", "0.9", "--boot-seed", "3"]) == 0
    assert "90% CI" in (grid / "report.md").read_text() and "100 replicates, RNG seed 3" in (grid / "report.md").read_text()


def test_judge_rows_keep_first_token_rank_and_bins_by_rank(tmp_path: Path):
    from sert.judge import items_from_rows
    items = items_from_rows([{"qid": "a", "question": "Q", "text": "t", "first_token_rank": 2},
                             {"qid": "b", "question": "Q", "output": "o"}], "x")
    assert items[0]["first_token_rank"] == 2 and "first_token_rank" not in items[1]
    root = tmp_path / "fig1"
    rows = [{"qid": "a", "first_token_rank": 0, "overall": 9.0}, {"qid": "a", "first_token_rank": 0, "overall": 1.0},
            {"qid": "b", "first_token_rank": 0, "overall": 1.5}, {"qid": "a", "first_token_rank": 1, "overall": None},
            {"qid": "b", "first_token_rank": 1, "overall": 6.0}]
    make_run(root, "arm", "filter", "gpt2", "commonsense_qa", judge=judge_metrics(1),
             config={"judge": {"target": "candidates", "input": None}, "generation": {"mode": "topk_alternatives"}},
             extra_files={("judge", "judge.jsonl"): "".join(json.dumps(r) + "\n" for r in rows)})
    text = build_report(root, plots=False)[0].read_text()
    # rank 0: both questions have an output in [0,2), only a in [8,10]; rank 1: b in [6,8), a unscored
    assert "| rank 0 | 2 | 1.00 | 0.00 | 0.00 | 0.00 | 0.50 |" in text
    assert "| rank 1 | 2 | 0.00 | 0.00 | 0.00 | 0.50 | 0.00 |" in text


@pytest.mark.parametrize("exp", [["experiment=fig1_sampling"], ["experiment=fig1_sampling", "profile=cpu"]])
def test_fig1_experiment_samples_held_out_questions(exp):
    from conftest import compose
    cfg = compose(*exp)
    assert cfg.dataset.split == "test" and cfg.stage.name == "filter" and list(cfg.stage.extra_steps) == ["judge"]
    assert list(cfg.filter.order) == ["pattern", "length", "rep2", "perplexity"] and cfg.judge.target == "candidates"
    sert_arm = compose(*exp, "prompts.generate='Question: {question}. Answer:'")
    from sert.data import make_record
    from sert.evaluate import prompt_for
    from sert.prompts import Prompts
    rec = make_record({"question": "Is water wet?", "answer": "Yes"}, "q")
    p = Prompts(**{k: v for k, v in sert_arm.prompts.items()})
    assert p.generation_prompt(rec) == prompt_for(Prompts(), "self_train", rec)  # the SERT model's training prompt


def test_fig4_arms_share_questions():
    from conftest import compose
    for preset in ("raw", "full"):
        cfg = compose("experiment=fig4_filter_ablation", f"filter={preset}")
        assert cfg.dataset.limit == 100 and cfg.judge.sample is None and cfg.judge.target == "selected"
    assert compose("experiment=fig4_filter_ablation", "filter=raw").filter.selector.strategy == "random"


def test_failed_study_cells_are_listed(tmp_path: Path):
    root = tmp_path / "results"
    seeded_cell(root / "sqa_s0", "sert", [[True] * 4])
    (root / "sqa_s1").mkdir(parents=True)
    (root / "sqa_s1" / "CELL.failed.json").write_text(json.dumps({
        "cell": "sqa_s1", "finished": "2026-01-01 10:00:00",
        "jobs": [{"job": "finetune", "returncode": 0}, {"job": "rd", "returncode": 1}, {"job": "x", "returncode": None}]}))
    text = build_report(root, plots=False)[0].read_text()
    assert "| sqa_s1 | 2026-01-01 10:00:00 | rd (exit 1), x (skipped) |" in text


def _study_driver(study: str = "cpu_study"):
    import importlib.util
    spec = importlib.util.spec_from_file_location(f"{study}_run", Path(__file__).resolve().parents[1]
                                                  / "experiments" / study / "run.py")
    mod = importlib.util.module_from_spec(spec)
    import sys
    sys.modules[spec.name] = mod  # dataclasses look their module up
    spec.loader.exec_module(mod)
    return mod


def test_cpu_study_driver_picks_the_next_unfinished_cell(tmp_path: Path, capsys):
    drv = _study_driver()
    names = [c.name for c in drv.cells()]
    assert names[:6] == ["teacher_sqa", "teacher_csqa", "sqa_s0", "csqa_s0", "fig1", "fig4"]  # teachers before RD
    assert {f"{d}_s{s}" for d in ("sqa", "csqa") for s in (0, 1, 2)} <= set(names)
    assert drv.main(["next", "--dry-run", "--results", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "cell teacher_sqa" in out and "experiment=cpu_study_sqa stage=teacher teacher=local" in out
    (tmp_path / "teacher_sqa").mkdir()
    (tmp_path / "teacher_sqa" / "CELL.json").write_text("{}")
    assert drv.main(["next", "--dry-run", "--results", str(tmp_path), "--extra", "model=tiny"]) == 0
    out = capsys.readouterr().out
    assert "cell teacher_csqa" in out and "stage=teacher" in out and "model=tiny" in out
    assert drv.main(["list", "--results", str(tmp_path)]) == 0
    assert "teacher_sqa" in capsys.readouterr().out
    assert drv.main(["nope", "--dry-run", "--results", str(tmp_path)]) == 2


def test_study_v2_driver_orders_teacher_and_paths_before_their_users(tmp_path: Path, capsys):
    drv = _study_driver("study_v2")
    cells = drv.cells()
    names = [c.name for c in cells]
    fixed = {c.name: [j.overrides for j in c.jobs if not callable(j.overrides)] for c in cells}  # fig1: computed
    stages = {n: [o for ov in ovs for o in ov if o.startswith("stage=")] for n, ovs in fixed.items()}
    first = {s: min(i for i, n in enumerate(names) if f"stage={s}" in stages[n]) for s in ("teacher", "rd", "filter", "sert")}
    assert names[0] == "teacher_sqa" and first["teacher"] < first["rd"] and first["filter"] < first["sert"]
    assert {f"stage={m}" for m in ("finetune", "sert", "rd", "sert_rd")} <= {s for n in names if "_s1_" in n for s in stages[n]}
    assert all(ov[0].startswith("experiment=study_v2") for ovs in fixed.values() for ov in ovs)
    assert names.index("fig1_sqa") > names.index("sqa_s0_sert")  # it samples from that cell's SERT model
    assert drv.main(["next", "--dry-run", "--results", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "[study_v2] cell teacher_sqa" in out and "experiment=study_v2_sqa stage=teacher seed=0 teacher=local" in out
    assert "/study_v2/teacher_sqa/teacher" in out


@pytest.mark.parametrize("exp", ["study_v2", "study_v2_sqa", "study_v2_csqa"])
def test_study_v2_experiments_compose(exp):
    """The v2 settings: whole splits (a fixed CommonsenseQA subset), the paper's batch and lr, the epoch chosen on
    validation, one set of paths for every seed, budgets not below the longest training target."""
    from conftest import compose
    cfg = compose(f"experiment={exp}", "seed=2")
    assert cfg.model.name == "smollm2-135m" and cfg.seed == 2 and cfg.generation.seed == 0
    assert cfg.trainer.select == "val_acc" and cfg.trainer.save_strategy == "epoch"
    assert cfg.trainer.batch_size == 8 and cfg.trainer.lr == 3e-4
    assert cfg.generation.max_new_tokens == 256 and cfg.evaluate.max_new_tokens > cfg.teacher.max_tokens == 256
    assert cfg.evaluate.limit is None and cfg.dataset.limit == (2000 if exp == "study_v2_csqa" else None)
    # committed W&B runs: no artifacts, which record their local staging path
    assert cfg.logger.mode == "offline" and not cfg.logger.log_manifest and not cfg.logger.log_tables
    if exp != "study_v2":
        assert cfg.dataset.name == {"study_v2_sqa": "strategy_qa", "study_v2_csqa": "commonsense_qa"}[exp]


@pytest.mark.parametrize("exp", ["cpu_study", "cpu_study_sqa", "cpu_study_csqa", "cpu_study_fig1", "cpu_study_fig4"])
def test_cpu_study_experiments_compose(exp):
    from conftest import compose
    cfg = compose(f"experiment={exp}", "seed=1")
    assert cfg.model.name == "smollm2-135m" and cfg.device == "cpu" and cfg.seed == 1
    if exp == "cpu_study_sqa":
        assert cfg.dataset.name == "strategy_qa" and cfg.evaluate.limit is None and cfg.dataset.split == "train"
    if exp == "cpu_study_fig1":
        assert cfg.dataset.split == "test" and cfg.stage.name == "filter"
    if exp == "cpu_study_fig4":
        assert cfg.judge.target == "selected" and cfg.judge.sample is None and cfg.dataset.limit == 30


# ----------------------------------------------------------------------------- damaged inputs
def test_damaged_cached_step_file_is_named_not_reported(tmp_path: Path, capsys):
    """A cached metrics.json edited after its step finished (COMPLETE.json records its size and sha256) is
    not reported: one line names the file and the damaged entry."""
    from sert.artifacts import ArtifactStore

    run = make_run(tmp_path, "r", "sert", "gpt2", "commonsense_qa", metrics=eval_metrics(0.25), link=True)
    entry_dir = (run / "evaluate").resolve()
    entry = ArtifactStore(entry_dir.parents[1]).entry("evaluate", entry_dir.name)
    entry.finish({}, {})
    assert main([str(tmp_path), "--no-plots"]) == 0
    (entry_dir / "metrics.json").write_text(json.dumps(eval_metrics(0.95)))  # same size, other numbers
    capsys.readouterr()
    assert main([str(tmp_path), "--no-plots"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"sert-report: {run / 'evaluate' / 'metrics.json'}: metrics.json was modified")
    assert "is damaged" in err and len(err.splitlines()) == 1


@pytest.mark.parametrize("name, text, says", [
    ("metrics.json", '{"acc": 0.5, "fmt"', "metrics.json:1:19: not valid JSON (Expecting ':' delimiter) — the file looks truncated"),
    ("predictions.jsonl", '{"qid": "0", "correct": true}\n{"qid": "1", "corr', "predictions.jsonl:2: not valid JSON"),
])
def test_truncated_step_file_is_one_line_naming_it(tmp_path: Path, capsys, name, text, says):
    make_run(tmp_path, "r", "sert", "gpt2", "commonsense_qa", metrics=eval_metrics(0.5),
             extra_files={("evaluate", name): text})
    assert main([str(tmp_path), "--no-plots"]) == 1
    err = capsys.readouterr().err
    assert says in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_unreadable_run_json_is_listed_in_the_report(tmp_path: Path):
    make_run(tmp_path, "good", "sert", "gpt2", "commonsense_qa", metrics=eval_metrics(0.5))
    bad = tmp_path / "cut" / "run.json"
    bad.parent.mkdir()
    bad.write_text('{"stage": "sert", "choi')
    (tmp_path / "latin1").mkdir()
    (tmp_path / "latin1" / "run.json").write_bytes(b'{"stage": "caf\xe9"}')
    path, _ = build_report(tmp_path, plots=False)
    text = path.read_text()
    section = text.split("## Unreadable run.json files")[1].split("##")[0]
    assert "- cut/run.json:1:19: not valid JSON (Unterminated string starting at) — the file looks truncated" in section
    assert "- latin1/run.json: " in section and "not UTF-8 text (byte 0xe9 at offset 14)" in section
    assert text.startswith("# SERT report") and "1 runs (sert: 1)" in text
