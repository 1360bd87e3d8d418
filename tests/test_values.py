"""Nonsense values are refused in one line before anything runs; a non-UTF-8 input file is named."""

from __future__ import annotations

import json

import pytest
from conftest import compose, run_cli, run_dirs

from sert.config.checks import RULES, at_least, between, check_values


def test_the_shipped_defaults_pass():
    check_values(compose("model=tiny"))


@pytest.mark.parametrize("override, says", [
    ("generation.first_k=0", "generation.first_k must be >= 1, got 0"),
    ("generation.samples_per_token=0", "generation.samples_per_token must be >= 1, got 0"),
    ("generation.max_new_tokens=0", "generation.max_new_tokens must be >= 1, got 0"),
    ("generation.top_p=0", "generation.top_p must be in (0, 1], got 0.0"),
    ("generation.top_p=1.5", "generation.top_p must be in (0, 1], got 1.5"),
    ("generation.temperature=0", "generation.temperature must be > 0, got 0.0"),
    ("evaluate.max_new_tokens=0", "evaluate.max_new_tokens must be >= 1, got 0"),
    ("evaluate.label_only_max_new_tokens=-3", "evaluate.label_only_max_new_tokens must be >= 1, got -3"),
    ("filter.rep2.max_rate=1.2", "filter.rep2.max_rate must be in [0, 1], got 1.2"),
    ("filter.length.min_tokens=-1", "filter.length.min_tokens must be >= 0, got -1"),
    ("trainer.lr=0", "trainer.lr must be > 0, got 0.0"),
    ("trainer.batch_size=0", "trainer.batch_size must be >= 1, got 0"),
    ("trainer.eval_fraction=1", "trainer.eval_fraction must be in [0, 1), got 1.0"),
    ("trainer.save_total_limit=0", "trainer.save_total_limit must be null or >= 1, got 0"),
    ("teacher.max_tokens=0", "teacher.max_tokens must be >= 1, got 0"),
    ("teacher.n=0", "teacher.n must be >= 1, got 0"),
    ("teacher.top_p=0", "teacher.top_p must be null or in (0, 1], got 0.0"),
    ("judge.score_tokens=0", "judge.score_tokens must be >= 1, got 0"),
    ("judge.concurrency=0", "judge.concurrency must be >= 1, got 0"),
    ("seed=-1", "seed must be >= 0, got -1"),
])
def test_nonsense_is_refused_naming_key_rule_and_value(override, says):
    with pytest.raises(ValueError) as e:
        check_values(compose("model=tiny", override))
    assert str(e.value) == says


@pytest.mark.parametrize("overrides", [["trainer.epochs=-1"], ["trainer.epochs=0"],
                                       ["trainer.epochs=0", "trainer.max_steps=0"]])
def test_training_that_would_not_train_is_refused(overrides):
    with pytest.raises(ValueError, match="would not be trained at all"):
        check_values(compose("model=tiny", *overrides))


def test_edges_are_accepted():
    check_values(compose("model=tiny", "trainer.epochs=0", "trainer.max_steps=3", "generation.top_p=1",
                         "filter.rep2.max_rate=1.0", "filter.perplexity.min_ppl=0", "teacher.temperature=0",
                         "trainer.save_total_limit=null", "teacher.top_p=null", "generation.top_k=0"))


def test_rule_helpers_hand_checked():
    assert at_least(1).ok(1) and not at_least(1).ok(0) and not at_least(1).ok(True) and not at_least(1).ok("2")
    half_open = between(0, 1, lo_open=True)
    assert [half_open.ok(v) for v in (0, 1e-9, 1, 1.0001)] == [False, True, True, False]
    assert between(0, 1).optional().ok(None) and between(0, 1).optional().must == "null or in [0, 1]"


def test_every_rule_names_a_key_of_the_schema():
    cfg = compose("model=tiny")
    from omegaconf import OmegaConf

    missing = [k for k in RULES if OmegaConf.select(cfg, k, default="<absent>") == "<absent>"]
    assert missing == []


# ----------------------------------------------------------------------------- through the CLI
@pytest.mark.parametrize("stage, override, says", [
    ("finetune", "trainer.epochs=-1", "trainer.epochs must be > 0 (or trainer.max_steps > 0), got epochs=-1.0"),
    ("generate", "generation.first_k=0", "generation.first_k must be >= 1, got 0"),
    ("evaluate", "evaluate.max_new_tokens=0", "evaluate.max_new_tokens must be >= 1, got 0"),
])
def test_cli_refuses_nonsense_before_any_step(tmp_path, csqa_files, stage, override, says):
    data, split = csqa_files
    out = tmp_path / "out"
    proc = run_cli(f"stage={stage}", "model=tiny", "device=cpu", "logger=none", f"dataset.path={data}",
                   f"dataset.split_file={split}", override, out=out, check=False, env={"HYDRA_FULL_ERROR": "0"})
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    (line,) = [x for x in proc.stderr.splitlines() if "ValueError" in x]
    assert line.startswith(f"ValueError: {says}")
    m = json.loads((run_dirs(out)[0] / "run.json").read_text())
    assert m["status"] == "failed" and m["error"]["step"] is None and m["steps"] == []
    assert not (out / "cache").exists() or not any((out / "cache").rglob("COMPLETE.json"))


@pytest.mark.parametrize("which", ["dataset.path", "dataset.split_file", "filter.input"])
def test_non_utf8_input_names_the_file(tmp_path, csqa_files, which):
    data, split = csqa_files
    bad = tmp_path / "latin1.bin"
    args = {"dataset.path": data, "dataset.split_file": split}
    stage = "data"
    if which == "filter.input":
        stage = "filter"
        bad.write_bytes(b'{"qid": "q", "text": "caf\xe9"}\n')
    elif which == "dataset.path":
        bad = tmp_path / "latin1.json"
        bad.write_bytes(json.dumps([{"question": "q", "answer": "A"}]).encode().replace(b"q", b"\xe9"))
    else:
        bad.write_bytes(b'{"train": [0], "test": [1], "note": "\xff"}')
    args[which] = bad
    proc = run_cli(f"stage={stage}", "model=tiny", "logger=none", *[f"{k}={v}" for k, v in args.items()],
                   out=tmp_path / "out", check=False, env={"HYDRA_FULL_ERROR": "0"})
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert f"{bad}: not UTF-8 text (byte 0x" in proc.stderr and "save it as UTF-8" in proc.stderr


def test_non_utf8_teacher_and_judge_inputs_name_the_file(tmp_path):
    from sert.artifacts import read_jsonl
    from sert.teacher_data import read_teacher_input

    bad = tmp_path / "t.jsonl"
    bad.write_bytes(b'{"question": "q", "reasoning": "caf\xe9"}\n')
    for read in (read_teacher_input, read_jsonl):
        with pytest.raises(ValueError, match=rf"^{bad}: not UTF-8 text \(byte 0xe9 at offset 35\); save it as UTF-8$"):
            read(bad)
