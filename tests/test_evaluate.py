"""The evaluate step: prompts per trained format, batched greedy decoding, scoring, checkpoint resolution,
and the real CLI on an explicit checkpoint."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import compose, run_cli, run_dirs
from sert import evaluate
from sert.artifacts import read_json, read_jsonl, write_json
from sert.data import make_record
from sert.evaluate import generate, prompt_for, score
from sert.models import byte_tokenizer, load_model, save_model
from sert.pipeline import Context
from sert.prompts import Prompts

TINY = {"n_layer": 1, "n_embd": 16, "n_head": 2, "n_positions": 256, "seed": 0}
REC = make_record({"question": "Where do you keep milk cold? Answer choices: (A) oven, (B) fridge.", "answer": "B"}, "q0")
SQA = make_record({"question": "Is water wet?", "answer": "Yes"}, "q1")


def test_prompt_is_the_trained_formats_prompt_part():
    p = Prompts()
    q = REC.question
    assert prompt_for(p, "self_train", REC) == f"Question: {q}. Answer:"
    assert prompt_for(p, "distill", REC) == f"Question: {q}. Answer: Let's think step by step."
    assert prompt_for(p, "label_only", REC) == f"Question: {q} Answer:"


def test_score_reasoning_outputs_hand_computed():
    tok = byte_tokenizer()  # one token per byte: lengths are character counts
    outputs = [" Milk spoils. So the answer is (B) fridge.", " aaaa"]
    rows, m = score([REC, SQA], outputs, tok, "self_train")
    assert [r["extracted"] for r in rows] == ["B", None]
    assert [r["correct"] for r in rows] == [True, False]
    assert [r["format_ok"] for r in rows] == [True, False]
    assert rows[0]["reasoning"] == "Milk spoils." and rows[0]["gold"] == "B"
    # len: "Milk spoils." = 12 bytes, "aaaa" (no answer sentence: all reasoning) = 4 -> 8.0
    # rep: output 1 "Milk spoils. So the answer is (B) fridge." (41 bytes, 22 distinct), output 2 "aaaa" -> 0.75
    text = "Milk spoils. So the answer is (B) fridge."
    rep1 = 1 - len(set(text)) / len(text)
    assert m == {"acc": 0.5, "fmt": 0.5, "len": 8.0, "rep": round((rep1 + 0.75) / 2, 4), "n": 2,
                 "acc_lenient": 0.5, "fmt_prefix": 0.5}


def test_score_label_only_reports_accuracy_only():
    rows, m = score([REC, SQA], [" (B) fridge", " No"], byte_tokenizer(), "label_only")
    assert m == {"acc": 0.5, "fmt": None, "len": None, "rep": None, "n": 2, "acc_lenient": 0.5}
    assert rows[0]["format_ok"] is None and rows[0]["reasoning"] is None


def test_batched_greedy_generation_matches_one_by_one():
    model, tok = load_model("tiny", random_init=TINY, device="cpu")
    prompts = ["Question: a? Answer:", "Question: a much longer question here? Answer:", "Q: b"]
    batched = generate(model, tok, prompts, max_new_tokens=6, batch_size=3)
    single = [generate(model, tok, [p], max_new_tokens=6, batch_size=1)[0] for p in prompts]
    assert batched == single and all(o for o in batched)


@pytest.fixture
def checkpoint(tmp_path) -> Path:
    model, tok = load_model("tiny", random_init=TINY, device="cpu")
    d = save_model(model, tok, tmp_path / "entry" / "model")
    write_json(d / "training_info.json", {"step": "distill", "format": "distill", "init": "base"})
    return tmp_path / "entry"


def test_cli_evaluate_explicit_checkpoint(tmp_path, sqa_jsonl, checkpoint):
    out = tmp_path / "out"
    args = ["stage=evaluate", "model=tiny", "device=cpu", "dataset=strategy_qa", f"dataset.path={sqa_jsonl}",
            "evaluate.split=train", "evaluate.limit=3", "evaluate.max_new_tokens=5", f"evaluate.checkpoint={checkpoint}"]
    run_cli(*args, out=out)
    run = read_json(run_dirs(out)[0] / "run.json")
    ev = run["steps"][0]
    assert ev["step"] == "evaluate" and ev["summary"]["format"] == "distill"  # from training_info.json
    preds = read_jsonl(Path(ev["dir"]) / "predictions.jsonl")
    assert len(preds) == 3 and preds[0]["question"].startswith("Can a fish")
    metrics = read_json(Path(ev["dir"]) / "metrics.json")
    assert set(metrics) == {"acc", "fmt", "len", "rep", "n", "acc_lenient", "fmt_prefix", "limit_hit",
                            "acc_option"} and metrics["n"] == 3
    # option-likelihood accuracy: each row's argmax over Yes/No, scored against the gold answer
    assert all(set(p["option_logprobs"]) == {"Yes", "No"} for p in preds)
    assert all(p["option_pred"] == max(p["option_logprobs"], key=p["option_logprobs"].get) for p in preds)
    assert metrics["acc_option"] == round(sum(p["option_pred"] == p["gold"] for p in preds) / 3, 4)
    # each row's finish reason, and the share cut at the new-token budget
    assert {p["finish_reason"] for p in preds} <= {"eos", "stop", "length"}
    assert metrics["limit_hit"] == round(sum(p["finish_reason"] == "length" for p in preds) / 3, 4)
    assert ev["summary"]["metrics"] == metrics


def ctx_for(tmp_path: Path, sqa_jsonl: Path, *overrides: str) -> Context:
    cfg = compose("model=tiny", "device=cpu", "dataset=strategy_qa", f"dataset.path={sqa_jsonl}",
                  f"paths.output_dir={tmp_path}", f"paths.cache_dir={tmp_path / 'cache'}", "evaluate.split=train",
                  "evaluate.limit=2", "evaluate.max_new_tokens=4", *overrides)
    (tmp_path / "run").mkdir(exist_ok=True)
    return Context(cfg, tmp_path / "run")


def test_base_model_format_override_and_bad_settings(tmp_path, sqa_jsonl):
    out = evaluate.run(ctx_for(tmp_path, sqa_jsonl, "evaluate.format=label_only"))
    assert out.summary["model"] == "base" and out.summary["metrics"]["fmt"] is None
    default = evaluate.run(ctx_for(tmp_path, sqa_jsonl))
    assert default.summary["format"] == "self_train" and default.key != out.key
    with pytest.raises(ValueError, match="evaluate.format must be one of"):
        evaluate.run(ctx_for(tmp_path, sqa_jsonl, "evaluate.format=cot"))
    with pytest.raises(FileNotFoundError, match="evaluate.checkpoint: no model"):
        evaluate.run(ctx_for(tmp_path, sqa_jsonl, f"evaluate.checkpoint={tmp_path / 'nope'}"))
    assert len(list((tmp_path / "cache").glob("evaluate/*/predictions.jsonl"))) == 2  # the bad ones ran nothing


EVAL_ARGS = ["stage=evaluate", "model=tiny", "device=cpu", "dataset=strategy_qa", "evaluate.split=train"]


def test_cli_evaluate_killed_after_two_batches_resumes_to_identical_results(tmp_path, sqa_jsonl):
    args = [*EVAL_ARGS, f"dataset.path={sqa_jsonl}", "evaluate.batch_size=1", "evaluate.max_new_tokens=8"]
    ref = tmp_path / "ref"
    run_cli(*args, out=ref)
    ref_dir = Path(read_json(run_dirs(ref)[-1] / "run.json")["steps"][0]["dir"])
    out = tmp_path / "out"
    killed = run_cli(*args, out=out, check=False, env={"SERT_KILL_AT": "evaluate.batch_saved:2"})
    assert killed.returncode == -9
    (partial,) = out.rglob("predictions.partial.jsonl")
    assert len(read_jsonl(partial)) == 2  # two batches of one question, durably saved before the kill
    proc = run_cli(*args, out=out)
    assert "resuming evaluation: 2/4 questions already decoded" in proc.stderr + proc.stdout
    step = read_json(run_dirs(out)[-1] / "run.json")["steps"][0]
    d = Path(step["dir"])
    assert d == partial.parent and not partial.exists()
    assert step["summary"]["decoding"]["resumed"] == 2 and step["summary"]["decoding"]["prompts"] == 4
    for name in ("predictions.jsonl", "metrics.json"):
        assert (d / name).read_bytes() == (ref_dir / name).read_bytes(), name


def test_cli_evaluate_tiny_with_default_max_new_tokens_clamps_and_finishes(tmp_path, sqa_jsonl):
    """model=tiny has 512 positions: the default max_new_tokens=512 cannot fit after any prompt."""
    out = tmp_path / "out"
    proc = run_cli(*EVAL_ARGS, f"dataset.path={sqa_jsonl}", "evaluate.limit=2", out=out)
    logs = proc.stderr + proc.stdout
    assert logs.count("model context too short: 2 of 2 rows got fewer than max_new_tokens=512") == 1
    step = read_json(run_dirs(out)[-1] / "run.json")["steps"][0]
    dec = step["summary"]["decoding"]
    assert dec["clamped"] == 2 and dec["truncated_prompts"] == 0 and dec["prompts"] == 2
    from sert.hardware import resolve_dtype

    assert 400 < dec["min_new_tokens_allowed"] < 512 and step["summary"]["dtype"] == resolve_dtype("auto", "cpu")
    preds = read_jsonl(Path(step["dir"]) / "predictions.jsonl")
    assert len(preds) == 2 and all(p["output"] for p in preds)


def test_dtype_is_resolved_before_it_enters_the_cache_key(tmp_path, sqa_jsonl):
    from sert.hardware import resolve_dtype

    fp32 = evaluate.run(ctx_for(tmp_path, sqa_jsonl, "evaluate.dtype=float32"))
    bf16 = evaluate.run(ctx_for(tmp_path, sqa_jsonl, "evaluate.dtype=bfloat16"))
    auto = evaluate.run(ctx_for(tmp_path, sqa_jsonl))  # auto: float32 here unless the CPU is fast at bf16
    assert (fp32.summary["dtype"], bf16.summary["dtype"]) == ("float32", "bfloat16") and fp32.key != bf16.key
    assert auto.cached and auto.key == {"float32": fp32.key, "bfloat16": bf16.key}[resolve_dtype("auto", "cpu")]
