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

from conftest import ROOT, run_cli, run_dirs
from fake_openai_server import FakeOpenAI
from sert.artifacts import read_json, read_jsonl
from sert.data import Choice, Record
from sert.teacher import parse_teacher_answer

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
