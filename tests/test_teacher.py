"""Teacher step: answer parsing, the real CLI against the fake server (caching, kill/resume, failures,
batch mode, key hygiene) and file ingestion."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import CSQA_ROWS, ROOT, run_cli, run_dirs
from fake_openai_server import FakeOpenAI
from sert.artifacts import read_json, read_jsonl
from sert.data import Choice, Record
from sert.teacher import ingest, parse_teacher_answer, question_key, read_teacher_input

KEY = "sk-teacher-SECRET-abcdef987654"
CSQA = Record("q0", "Where do you keep milk? Answer choices: (A) oven, (B) fridge, (C) shelf.", "B",
              (Choice("A", "oven"), Choice("B", "fridge"), Choice("C", "shelf")))
SQA = Record("q1", "Is water wet?", "Yes")


@pytest.mark.parametrize("rec,text,expected", [
    (CSQA, " Milk spoils when warm. A fridge keeps it cold. Therefore, the answer is (B).", "B"),
    (CSQA, " Milk needs cold. So the answer is B.", "B"),
    (CSQA, " The answer is: (C) shelf, not (B).", "C"),
    (CSQA, " You keep milk in the fridge.", "B"),  # no label: the choice text
    (CSQA, " Hmm, I am not sure what to say here.", None),
    (SQA, " Water makes things wet. So the answer is yes.", "Yes"),
    (SQA, " No one doubts it... the answer is No.", "No"),
    (SQA, " It is a liquid.", None),
])
def test_parse_teacher_answer(rec, text, expected):
    assert parse_teacher_answer(text, rec) == expected


def csqa_reply(prompt: str) -> str:
    """Right for milk and birds, wrong for the sun question."""
    if "milk" in prompt:
        return " Milk must stay cold, and a fridge is cold. Therefore, the answer is (B)."
    if "birds" in prompt:
        return " Birds flap their wings to fly. Therefore, the answer is (C)."
    return " The sun rises somewhere. Therefore, the answer is (B)."


@pytest.fixture
def server():
    with FakeOpenAI(csqa_reply, api_key=KEY) as srv:
        yield srv


def teacher_args(csqa_files, srv: FakeOpenAI, *extra: str) -> list[str]:
    data, split = csqa_files
    return ["stage=teacher", f"dataset.path={data}", f"dataset.split_file={split}", f"teacher.base_url={srv.base_url}",
            "teacher.api_key_env=SERT_TEST_KEY", "teacher.backoff_base=0.01", "teacher.max_retries=2",
            "teacher.timeout=5", *extra]


ENV = {"SERT_TEST_KEY": KEY}


def last_run(out: Path) -> dict:
    return read_json(run_dirs(out)[-1] / "run.json")


def assert_key_nowhere(out: Path) -> None:
    for p in out.rglob("*"):
        if p.is_file():
            assert KEY.encode() not in p.read_bytes(), f"API key leaked into {p}"


def test_cli_teacher_keep_correct_cache_and_no_key_on_disk(tmp_path, csqa_files, server):
    out = tmp_path / "out"
    proc = run_cli(*teacher_args(csqa_files, server), out=out, env=ENV)
    assert "teacher: 2 rows kept of 3 samples" in proc.stdout
    step = last_run(out)["steps"][0]
    rows = read_jsonl(Path(step["dir"]) / "teacher.jsonl")
    assert [(r["qid"], r["teacher_answer"], r["correct"]) for r in rows] == [("csqa-0", "B", True), ("csqa-1", "C", True)]
    assert rows[0]["reasoning"] == "Milk must stay cold, and a fridge is cold. Therefore, the answer is (B)."
    assert set(rows[0]) >= {"qid", "question", "answer", "reasoning", "teacher_answer", "correct", "sample"}
    s = step["summary"]
    assert (s["requests"], s["cache_hits"], s["failed"], s["kept"], s["no_answer"]) == (3, 0, 0, 2, 0)
    assert s["prompt_tokens"] > 0 and s["est_cost_usd"] > 0 and s["metrics"]["teacher/acc"] == round(2 / 3, 4)
    assert server.bodies[0]["prompt"].endswith(". Answer: Let's think step by step.")
    assert any(b["prompt"].startswith("Question: Where do you keep milk cold?") for b in server.bodies)
    assert server.total_calls == 3

    run_cli(*teacher_args(csqa_files, server), out=out, env=ENV)  # same config: step cache hit
    assert last_run(out)["steps"][0]["cached"] and server.total_calls == 3
    run_cli(*teacher_args(csqa_files, server, "teacher.keep=all"), out=out, env=ENV)  # new step, cached responses
    s = last_run(out)["steps"][0]["summary"]
    assert (s["kept"], s["cache_hits"], server.total_calls) == (3, 3, 3)
    assert_key_nowhere(out)


def test_cli_kill_mid_run_then_resume_makes_only_missing_calls(tmp_path, csqa_files, server):
    out = tmp_path / "out"
    args = teacher_args(csqa_files, server, "teacher.n=3", "teacher.temperature=0.7", "teacher.concurrency=1",
                        "teacher.keep=all")
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "SERT_OUTPUT_DIR": str(out), **ENV}
    proc = subprocess.Popen([sys.executable, "-m", "sert", *args], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def kill_on_fifth(prompt: str) -> bool:
        if server.total_calls == 5:  # 4 replies delivered and logged; kill while the 5th is in flight
            os.kill(proc.pid, signal.SIGKILL)
            return True
        return False

    server.on_request = kill_on_fifth
    assert proc.wait(timeout=120) == -signal.SIGKILL
    server.on_request = None
    logs = list((out / "cache" / "llm").glob("*.jsonl"))
    assert len(logs) == 1 and len(read_jsonl(logs[0])) == 4
    assert not list((out / "cache" / "teacher").glob("*/COMPLETE.json"))

    run_cli(*args, out=out, env=ENV)
    assert server.total_calls == 5 + 5  # 9 needed, 4 logged before the kill: 5 more
    rows = read_jsonl(logs[0])
    assert len(rows) == 9 and len({r["key"] for r in rows}) == 9  # no duplicates
    s = last_run(out)["steps"][0]["summary"]
    assert (s["samples"], s["cache_hits"], s["failed"]) == (9, 4, 0)
    assert_key_nowhere(out)


def test_cli_failures_are_counted_then_retried_alone(tmp_path, csqa_files, server):
    out = tmp_path / "out"
    server.faults = {"birds": ["500"] * 3}
    proc = run_cli(*teacher_args(csqa_files, server), out=out, env=ENV)
    assert "1 failed" in proc.stdout
    step = last_run(out)["steps"][0]
    s = step["summary"]
    assert s["failed"] == 1 and s["failures"][0]["qid"] == "csqa-1" and s["failures"][0]["attempts"] == 3
    assert [r["qid"] for r in read_jsonl(Path(step["dir"]) / "failures.jsonl")] == ["csqa-1"]
    assert server.calls.total() == 5
    # the endpoint recovers: the rerun re-opens the entry and calls only the failed request
    run_cli(*teacher_args(csqa_files, server), out=out, env=ENV)
    s = last_run(out)["steps"][0]["summary"]
    assert (s["failed"], s["kept"], s["cache_hits"]) == (0, 2, 2) and server.calls.total() == 6


def test_cli_batch_mode(tmp_path, csqa_files, server):
    out = tmp_path / "out"
    run_cli(*teacher_args(csqa_files, server, "teacher.mode=batch", "teacher.poll_interval=0.05",
                          "teacher.api=chat"), out=out, env=ENV)
    step = last_run(out)["steps"][0]
    assert step["summary"]["kept"] == 2 and step["summary"]["est_cost_usd"] > 0
    entry = Path(step["dir"])
    assert (entry / "batch-batch_1.json").exists() and len(read_jsonl(entry / "batch_input.jsonl")) == 3
    assert server.paths["/v1/batches"] == 1 and server.paths["/v1/chat/completions"] == 0
    assert_key_nowhere(out)


def test_cli_missing_key_fails_clearly(tmp_path, csqa_files):
    data, split = csqa_files
    proc = run_cli("stage=teacher", f"dataset.path={data}", f"dataset.split_file={split}",
                   "teacher.api_key_env=SERT_UNSET_KEY_VAR", out=tmp_path, check=False)
    assert proc.returncode != 0 and "set the environment variable SERT_UNSET_KEY_VAR" in proc.stderr


def test_cli_teacher_input_file(tmp_path, csqa_files):
    rows = [
        {"qid": "csqa-0", "completion": " Cold keeps milk. So the answer is (B)."},
        {"question": "What do birds use to fly?  Answer choices: (A) fins, (B) wheels, (C) wings, (D) roots, (E) legs.",
         "completion": " Wings. So the answer is (A)."},
        {"qid": "nope", "question": "Unknown question?", "completion": "x"},
    ]
    path = tmp_path / "teacher_in.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    data, split = csqa_files
    out = tmp_path / "out"
    run_cli("stage=teacher", f"dataset.path={data}", f"dataset.split_file={split}", f"teacher.input={path}",
            "teacher.keep=all", out=out)
    step = last_run(out)["steps"][0]
    got = read_jsonl(Path(step["dir"]) / "teacher.jsonl")
    assert [(r["qid"], r["teacher_answer"], r["correct"]) for r in got] == [("csqa-0", "B", True), ("csqa-1", "A", False)]
    s = step["summary"]
    assert s["unmatched"] == 1 and ":3: no record" in s["unmatched_rows"][0]


# ----------------------------------------------------------------------------- zero-shot-CoT answer step (API)
def two_step_reply(prompt: str) -> str:
    """Step 1 reasons without naming a label; step 2 (after "Therefore, the answer is") names it."""
    if prompt.endswith("Therefore, the answer is"):
        return " (A) east." if "sun" in prompt else " (B)." if "milk" in prompt else " (A) fins."
    return " It is cold inside (C) a shelf? No. Think of where it goes." if "milk" in prompt else " Hmm."


def test_cli_answer_step_reads_the_teacher_answer_from_step_two(tmp_path, csqa_files):
    out = tmp_path / "out"
    with FakeOpenAI(two_step_reply, api_key=KEY) as srv:
        run_cli(*teacher_args(csqa_files, srv, "teacher.answer_prompt='\nTherefore, the answer is'",
                              "teacher.answer_max_tokens=8"), out=out, env=ENV)
        step2 = [b for b in srv.bodies if b["prompt"].endswith("Therefore, the answer is")]
    step = last_run(out)["steps"][0]
    rows = read_jsonl(Path(step["dir"]) / "teacher.jsonl")
    # the reasoning alone would parse as (C) for milk; step 2 says (B), the gold answer: kept
    assert [(r["qid"], r["teacher_answer"]) for r in rows] == [("csqa-0", "B"), ("csqa-2", "A")]
    assert rows[0]["answer_completion"] == " (B)." and rows[0]["reasoning"].startswith("It is cold")
    assert len(step2) == 3 and all(b["max_tokens"] == 8 for b in step2)
    milk = next(b["prompt"] for b in step2 if "milk" in b["prompt"])
    assert milk == ("Question: " + CSQA_ROWS[0]["question"] + ". Answer: Let's think step by step."
                    + " It is cold inside (C) a shelf? No. Think of where it goes.\nTherefore, the answer is")
    assert step["summary"]["requests"] == 6 and step["summary"]["metrics"]["teacher/acc"] == round(2 / 3, 4)


# ----------------------------------------------------------------------------- reasoning-teacher files
def reasoning_teacher_file(path: Path, samples: dict) -> Path:
    path.write_text(json.dumps({"metadata": {"dataset_key": "commonsense_qa", "base_model": "text-davinci-002",
                                             "completion_key": "zs_cot"}, "data": samples}))
    return path


def rt_sample(i: int, j: int, question: str, reasoning: str, answer: str) -> dict:
    return {"sample_index": i, "completion_index": j, "question": question, "answer": "B",
            "reasoning_prompt": f"Q: {question}\nA: Let's think step by step.", "reasoning_completion": reasoning,
            "reasoning_finish_reason": "stop",
            "prompt": f"Q: {question}\nA: Let's think step by step.{reasoning}\nTherefore, the answer is",
            "completion": answer, "finish_reason": "stop"}


def test_ingest_reasoning_teacher_file(tmp_path):
    milk = "Where do you keep milk cold?  Answer choices:  (A) oven, (B) fridge,\n(C) shelf, (D) car, (E) bag."
    birds = "Q: What do birds use to fly? Answer choices: (A) fins, (B) wheels, (C) wings, (D) roots, (E) legs.\nA:"
    path = reasoning_teacher_file(tmp_path / "D_commonsense_qa.json", {
        "0": [rt_sample(0, 0, milk, " Milk spoils when warm, so (A) is out.", " (B) fridge"),
              rt_sample(0, 1, milk, " A fridge is cold.", " A")],
        "1": [rt_sample(1, 0, birds, " Birds have wings.", " C")],
        "7": [rt_sample(7, 0, "What is not in our data?", " Nothing.", " A")],
    })
    from sert.data import load_records

    data = tmp_path / "csqa.json"
    data.write_text(json.dumps(CSQA_ROWS))
    records, _ = load_records(path=str(data), split="train", split_file=None, limit=None, on_error="skip",
                              hub_id=None, hub_config=None, hub_splits={})
    got, unmatched = ingest(path, records)
    assert [(r["qid"], r["sample"], r["teacher_answer"], r["correct"]) for r in got] == [
        (records[0].qid, 0, "B", True), (records[0].qid, 1, "A", False), (records[1].qid, 0, "C", True)]
    assert got[0]["reasoning"] == "Milk spoils when warm, so (A) is out."  # the answer comes from `completion`
    assert got[0]["finish_reason"] == "stop" and len(unmatched) == 1 and "data[7][0]: no record" in unmatched[0]


def test_cli_reasoning_teacher_file_keep_correct(tmp_path, csqa_files):
    path = reasoning_teacher_file(tmp_path / "rt.json", {
        "0": [rt_sample(0, 0, CSQA_ROWS[0]["question"], " Cold keeps milk.", " (B)")],
        "1": [rt_sample(1, 0, CSQA_ROWS[1]["question"], " Wheels roll.", " (B)")],
        "2": [rt_sample(2, 0, "Unknown?", " x", " A")],
    })
    data, split = csqa_files
    out = tmp_path / "out"
    run_cli("stage=teacher", f"dataset.path={data}", f"dataset.split_file={split}", f"teacher.input={path}", out=out)
    step = last_run(out)["steps"][0]
    assert [r["qid"] for r in read_jsonl(Path(step["dir"]) / "teacher.jsonl")] == ["csqa-0"]
    s = step["summary"]
    assert (s["rows"], s["samples"], s["kept"], s["unmatched"]) == (3, 2, 1, 1)


@pytest.mark.parametrize("content,why", [
    ("qid,completion\ncsqa-0,hello\n", "line 1 is not a JSON object"),
    ('[{"qid": "csqa-0", "completion": "x"}]', "line 1 is not a JSON object"),
    ('{"metadata": {}, "rows": []}\n{"id": 3}\n', "no row has qid|question and reasoning|completion"),
])
def test_input_in_neither_format_is_one_clear_error(tmp_path, content, why):
    path = tmp_path / "in.txt"
    path.write_text(content)
    with pytest.raises(ValueError) as e:
        read_teacher_input(path)
    msg = str(e.value)
    assert "\n" not in msg and str(path) in msg and "neither a reasoning-teacher completion file" in msg and why in msg


def test_question_key_drops_prompt_wrappers():
    assert question_key("Q: Where is  it?\nA: Let's think step by step.") == "where is it?"
    assert question_key("Question: Where is it?") == question_key("where   is it?")


# ----------------------------------------------------------------------------- local teacher
def local_args(csqa_files, *extra: str) -> list[str]:
    data, split = csqa_files
    return ["stage=teacher", "teacher=local", "teacher.model=tiny", f"dataset.path={data}",
            f"dataset.split_file={split}", "teacher.batch_size=1", "teacher.max_tokens=8",
            "teacher.answer_max_tokens=4", "teacher.keep=all", "device=cpu", *extra]


def comparable(summary: dict) -> dict:
    """What must be equal between an uninterrupted and a resumed run (not this run's counters)."""
    return {k: v for k, v in summary.items() if k not in ("this_run", "cache_file", "seconds")}


def test_cli_local_teacher_killed_after_a_batch_resumes_to_the_same_result(tmp_path, csqa_files):
    full, killed = tmp_path / "full", tmp_path / "killed"
    run_cli(*local_args(csqa_files), out=full)
    step = last_run(full)["steps"][0]
    rows, summary = read_jsonl(Path(step["dir"]) / "teacher.jsonl"), step["summary"]
    assert [(r["qid"], r["sample"]) for r in rows] == [("csqa-0", 0), ("csqa-1", 0), ("csqa-2", 0)]
    assert all(isinstance(r["answer_completion"], str) for r in rows)
    assert (summary["requests"], summary["this_run"]["decoded"], summary["this_run"]["cache_hits"]) == (6, 6, 0)
    assert summary["completion_tokens"] == summary["this_run"]["new_tokens"] > 0
    log = [r for r in read_jsonl(summary["cache_file"])]
    first = {r["request"]["prompt"]: r["text"] for r in log if r["request"]["max_tokens"] == 8}
    second = [r["request"]["prompt"] for r in log if r["request"]["max_tokens"] == 4]
    # step 2 continues step 1's prompt + reasoning with the answer prompt (tiny has no chat template)
    assert sorted(second) == sorted(p + t + "\nTherefore, the answer is" for p, t in first.items())
    assert all(p.startswith("Question: ") and p.endswith("Answer: Let's think step by step.") for p in first)

    proc = run_cli(*local_args(csqa_files), out=killed, check=False, env={"SERT_KILL_AT": "teacher.batch_saved:2"})
    assert proc.returncode == -signal.SIGKILL
    assert len(read_jsonl(next((killed / "cache" / "llm").glob("local-*.jsonl")))) == 2
    run_cli(*local_args(csqa_files), out=killed)
    again = last_run(killed)["steps"][0]
    assert again["summary"]["this_run"]["decoded"] == 4 and again["summary"]["this_run"]["cache_hits"] == 2
    assert read_jsonl(Path(again["dir"]) / "teacher.jsonl") == rows
    assert comparable(again["summary"]) == comparable(summary)
    assert comparable(read_json(Path(again["dir"]) / "teacher_summary.json")) == comparable(
        read_json(Path(step["dir"]) / "teacher_summary.json"))


def chat_tokenizer():
    from sert.models import byte_tokenizer, prepare_tokenizer

    tok = prepare_tokenizer(byte_tokenizer())
    tok.chat_template = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>{% endfor %}"
                         "{% if add_generation_prompt %}<|assistant|>{% endif %}")
    return tok


def local_teacher(tmp_path, **over):
    from omegaconf import OmegaConf

    from conftest import compose
    from sert.teacher import LocalTeacher

    t = OmegaConf.to_container(compose("teacher=local", "teacher.model=tiny", "device=cpu").teacher, resolve=True)
    return LocalTeacher(cache_dir=str(tmp_path), seed=0, **{**t, **over})


def test_chat_template_user_turn_and_prefilled_assistant_turn(tmp_path):
    teacher = local_teacher(tmp_path)
    teacher._tok = chat_tokenizer()
    prompt = "Question: Is water wet?. Answer: Let's think step by step."
    assert teacher.render(prompt) == ("<|user|>Question: Is water wet?. Answer:<|end|><|assistant|>"
                                      "Let's think step by step.")
    no_prefill = local_teacher(tmp_path, chat_prefill=None)
    no_prefill._tok = chat_tokenizer()
    assert no_prefill.render(prompt) == f"<|user|>{prompt}<|end|><|assistant|>"
    off = local_teacher(tmp_path, chat_template=False)
    off._tok = chat_tokenizer()
    assert off.render(prompt) == prompt


def test_missing_model_file_is_one_clear_error(tmp_path, monkeypatch):
    from sert.teacher import local_model_spec

    monkeypatch.setenv("SERT_MODELS_DIR", str(tmp_path / "models"))
    with pytest.raises(FileNotFoundError) as e:
        local_model_spec("qwen2.5-1.5b-instruct-offline")
    msg = str(e.value)
    assert "\n" not in msg and str(tmp_path / "models" / "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf") in msg
    assert "experiments/get_qwen_teacher.sh" in msg
    with pytest.raises(FileNotFoundError, match="no such local file"):
        local_model_spec(str(tmp_path / "nowhere.gguf"))


def test_model_with_context_shorter_than_the_prompt_is_one_clear_error(tmp_path):
    from sert.models import load_model, save_model
    from sert.prompts import Prompts
    from sert.teacher import collect_local

    model, tok = load_model("tiny", random_init={"n_layer": 1, "n_embd": 16, "n_head": 2, "n_positions": 32},
                            device="cpu")
    save_model(model, tok, tmp_path / "short")
    teacher = local_teacher(tmp_path, model=str(tmp_path / "short"))
    with pytest.raises(ValueError) as e:
        collect_local(teacher, [CSQA], Prompts(), teacher.t)
    msg = str(e.value)
    assert "\n" not in msg and "context is 32 tokens" in msg and "question q0" in msg


def test_ctranslate2_backend_missing_is_a_clear_error(tmp_path, monkeypatch):
    from sert.prompts import Prompts
    from sert.teacher import collect_local

    monkeypatch.setitem(sys.modules, "sert.ct2", None)  # as on an install without the ct2 module
    teacher = local_teacher(tmp_path, backend="ctranslate2", max_tokens=4)
    with pytest.raises(RuntimeError, match="teacher.backend=ctranslate2 needs sert.ct2"):
        collect_local(teacher, [SQA], Prompts(), teacher.t)


def test_cli_llamacpp_preset_against_a_one_at_a_time_server(tmp_path, csqa_files):
    """teacher=llamacpp: one request in flight, two zero-shot-CoT steps, no key needed or sent."""
    data, split = csqa_files
    out = tmp_path / "out"
    with FakeOpenAI(two_step_reply, serial_seconds=0.05) as srv:
        run_cli("stage=teacher", "teacher=llamacpp", f"teacher.base_url={srv.base_url}", f"dataset.path={data}",
                f"dataset.split_file={split}", out=out, env={"OPENAI_API_KEY": KEY})
        assert srv.max_in_flight == 1 and srv.total_calls == 6
        assert set(srv.auth_headers) == {"Bearer EMPTY"}  # OPENAI_API_KEY is not sent to a local server
    s = last_run(out)["steps"][0]["summary"]
    assert (s["kept"], s["failed"], s["est_cost_usd"]) == (2, 0, 0.0)
    assert_key_nowhere(out)


def test_local_rerun_with_everything_cached_loads_no_model(tmp_path):
    from sert.prompts import Prompts
    from sert.teacher import collect_local

    first = local_teacher(tmp_path, max_tokens=3, answer_max_tokens=2)
    rows = collect_local(first, [CSQA, SQA], Prompts(), first.t)
    assert first._model is not None and first.stats.prompts == 4
    again = local_teacher(tmp_path, max_tokens=3, answer_max_tokens=2)
    assert collect_local(again, [CSQA, SQA], Prompts(), again.t) == rows
    assert again._model is None and again.counts == {"requests": 4, "cache_hits": 4}


def test_cli_answer_step_in_batch_mode_is_a_second_batch(tmp_path, csqa_files):
    out = tmp_path / "out"
    with FakeOpenAI(two_step_reply, api_key=KEY) as srv:
        run_cli(*teacher_args(csqa_files, srv, "teacher.mode=batch", "teacher.poll_interval=0.05",
                              "teacher.answer_prompt='\nTherefore, the answer is'"), out=out, env=ENV)
        assert srv.paths["/v1/batches"] == 2 and srv.paths["/v1/completions"] == 0
    step = last_run(out)["steps"][0]
    entry = Path(step["dir"])
    assert (entry / "batch-batch_1.json").exists() and (entry / "answer" / "batch-batch_2.json").exists()
    rows = read_jsonl(entry / "teacher.jsonl")
    assert [(r["qid"], r["teacher_answer"]) for r in rows] == [("csqa-0", "B"), ("csqa-2", "A")]
