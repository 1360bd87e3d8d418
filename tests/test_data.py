"""Loading both local formats into typed records; malformed rows are reported, never silently dropped."""

from __future__ import annotations

import json

import pytest

from sert.data import DataError, load_records, make_record, parse_choices_from_text


def test_choices_parsed_from_unified_question_text():
    q = "Where? Answer choices: (A) race track, (B) populated areas, (C) the desert, (D) apartment, (E) roadblock."
    assert [(c.label, c.text) for c in parse_choices_from_text(q)] == [
        ("A", "race track"), ("B", "populated areas"), ("C", "the desert"), ("D", "apartment"), ("E", "roadblock")]


def test_unified_json_with_split_file(csqa_files):
    data, split = csqa_files
    train, report = load_records(path=str(data), split="train", split_file=str(split))
    test, _ = load_records(path=str(data), split="test", split_file=str(split))
    assert (len(train), len(test), report.loaded) == (3, 1, 3)
    assert train[0].answer == "B" and train[0].answer_text == "fridge" and len(train[0].choices) == 5
    assert test[0].answer_text == "heat"


def test_limit_takes_first_rows(csqa_files):
    data, split = csqa_files
    recs, _ = load_records(path=str(data), split="train", split_file=str(split), limit=2)
    assert [r.answer for r in recs] == ["B", "C"]


def test_jsonl_binary_answers_normalised(sqa_jsonl):
    recs, _ = load_records(path=str(sqa_jsonl), split="train")
    assert [r.answer for r in recs] == ["No", "Yes", "No", "Yes"] and recs[0].choices == ()


def test_jsonl_with_choice_list_appends_choices_to_question(tmp_path):
    p = tmp_path / "d.jsonl"
    p.write_text(json.dumps({"question": "Pick one?", "answer": "b", "choices": ["x", "y"]}) + "\n")
    (rec,), _ = load_records(path=str(p), split="train")
    assert rec.answer == "B" and rec.question == "Pick one? Answer choices: (A) x, (B) y."


@pytest.mark.parametrize("row,msg", [
    ({"answer": "A"}, "question"),
    ({"question": "q?"}, "answer"),
    ({"question": "q? Answer choices: (A) x, (B) y.", "answer": "C"}, "not among the choices"),
    ({"question": "q?", "answer": "maybe"}, "neither"),
])
def test_malformed_rows_rejected(row, msg):
    with pytest.raises(DataError, match=msg):
        make_record(row, "0")


def test_malformed_rows_skipped_and_counted_with_location(tmp_path):
    p = tmp_path / "bad.jsonl"
    p.write_text('{"question": "Is it?", "answer": "Yes"}\n{not json\n{"question": "Q?", "answer": "perhaps"}\n')
    recs, report = load_records(path=str(p), split="train", on_error="skip")
    assert len(recs) == 1 and len(report.skipped) == 2
    assert report.skipped[0].startswith(f"{p}:2") and report.skipped[1].startswith(f"{p}:3")


def test_malformed_row_fails_run_when_asked(tmp_path):
    p = tmp_path / "bad.json"
    p.write_text(json.dumps([{"question": "Is it?", "answer": "Yes"}, {"question": "", "answer": "No"}]))
    with pytest.raises(DataError, match=r"bad.json\[1\]: missing or empty 'question'"):
        load_records(path=str(p), split="train", on_error="fail")


def test_missing_file_is_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="dataset.path"):
        load_records(path=str(tmp_path / "nope.json"), split="train")


# ----------------------------------------------------------------------------- nonsense is refused by name
@pytest.mark.parametrize("limit", [0, -1])
def test_nonpositive_limit_is_refused_up_front(csqa_files, limit):
    """limit=0 used to report "no usable records" and limit=-1 silently dropped the last row."""
    from conftest import compose

    from sert.cli import check_config

    data, split = csqa_files
    with pytest.raises(ValueError, match=rf"dataset.limit must be a positive integer .* got {limit}"):
        check_config(compose(f"dataset.limit={limit}"))
    with pytest.raises(ValueError, match=rf"evaluate.limit must be a positive integer .* got {limit}"):
        check_config(compose(f"evaluate.limit={limit}"))
    with pytest.raises(ValueError, match=rf"limit must be a positive integer .* got {limit}"):
        load_records(path=str(data), split="train", split_file=str(split), limit=limit)
    check_config(compose("dataset.limit=1", "evaluate.limit=null"))  # valid values pass


def test_truncated_json_names_file_and_position(tmp_path, csqa_files):
    data, split = csqa_files
    cut = tmp_path / "cut.json"
    cut.write_text(data.read_text()[:150])
    msg = rf"^{cut}:1:143: not valid JSON \(Unterminated string starting at\) — the file looks truncated$"
    with pytest.raises(DataError, match=msg):
        load_records(path=str(cut), split="train", split_file=str(split))
    bad_split = tmp_path / "bad.split.json"
    bad_split.write_text('{"train": [0, 1,\n "test": [3]}')
    with pytest.raises(DataError, match=rf"^{bad_split}:2:8: not valid JSON \(Expecting ',' delimiter\)$"):
        load_records(path=str(data), split="train", split_file=str(bad_split))
    with pytest.raises(FileNotFoundError, match="dataset.split_file: no such file"):
        load_records(path=str(data), split="train", split_file=str(tmp_path / "none.json"))
