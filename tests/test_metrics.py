"""Paper III-D metrics and answer extraction, against hand-computed examples and realistic outputs."""

from __future__ import annotations

import pytest

from sert.data import parse_choices_from_text
from sert.metrics import (compute_metrics, extract_answer, is_well_formatted, parse_answer, repetition_rate,
                          split_reasoning)

CSQA_Q = ("Sammy wanted to go to where the people were.  Where might he go? Answer choices: (A) race track, "
          "(B) populated areas, (C) the desert, (D) apartment, (E) roadblock.")
CSQA = parse_choices_from_text(CSQA_Q)
CSQA2 = parse_choices_from_text("The sanctions against the school were a punishing blow, and they seemed to what the "
                                "efforts the school had made to change? Answer choices: (A) ignore, (B) enforce, "
                                "(C) authoritarian, (D) yell at, (E) avoid.")


# ----------------------------------------------------------------------------- repetition
def test_repetition_rate_hand_computed():
    assert repetition_rate(["a", "b", "a", "a"]) == pytest.approx(0.5)  # 2 unique of 4
    assert repetition_rate(["a", "b", "a", "a"], n=2) == pytest.approx(0.0)  # (a b) (b a) (a a): all unique
    assert repetition_rate([1, 2, 1, 2, 1, 2], n=2) == pytest.approx(1 - 2 / 5)  # (1 2) x3, (2 1) x2
    assert repetition_rate("the cat saw the dog".split()) == pytest.approx(1 - 4 / 5)
    assert repetition_rate([]) == 0.0 and repetition_rate([7], n=2) == 0.0


# ----------------------------------------------------------------------------- extraction
@pytest.mark.parametrize("output,expected", [
    # the trained SERT/RD format, label + text
    (" People gather in cities and towns. So the answer is (B) populated areas.", "B"),
    # lower case label, no text
    (" A race track has crowds. so the answer is (a).", "A"),
    # option text only, different case and trailing punctuation
    (" Crowds live where many people live. So the answer is Populated Areas!", "B"),
    # colon after the marker, comma before it
    (" He wants people, so, the answer is: populated areas", "B"),
    # bare label with a full stop
    (" So the answer is E.", "E"),
    # option text inside a longer phrase: whole words, earliest match
    (" So the answer is the desert, because nobody is there.", "C"),
    # run-on generation after the answer does not leak a second option
    (" So the answer is (D) apartment. Question: Where is a race track? Answer: (A) race track", "D"),
    # looser marker (counts for Acc, not for Fmt)
    (" Many people live in towns. The answer is (B).", "B"),
    # no answer sentence at all
    (" Sammy went to the the the the", None),
    # a label outside the choices
    (" So the answer is (F) the moon.", None),
    # article "a" is not the label A
    (" So the answer is a place with people.", None),
])
def test_extract_commonsense_qa(output, expected):
    assert extract_answer(output, CSQA) == expected


def test_extract_prefers_the_first_answer_sentence():
    out = " To ignore is to pay no attention. So the answer is (A) ignore. So the answer is (B) enforce."
    assert extract_answer(out, CSQA2) == "A"
    # "yell at" must match whole words and beat the shorter "avoid" appearing later
    assert extract_answer(" So the answer is yell at them, not avoid.", CSQA2) == "D"


@pytest.mark.parametrize("output,expected", [
    (" Frost occurs in December, when some commencements happen. So the answer is Yes.", "Yes"),
    (" Hydrogen's atomic number is 1, 1 squared is 1, less than 5. So the answer is no.", "No"),
    (" So the answer is: NO", "No"),
    (" So the answer is true.", "Yes"),
    (" So the answer is No, it cannot.", "No"),
    (" The answer is yes", "Yes"),
    (" It depends on the weather and the season and the place.", None),
    (" So the answer is maybe.", None),
])
def test_extract_strategy_qa(output, expected):
    assert extract_answer(output, ()) == expected


@pytest.mark.parametrize("output,choices,expected", [
    (" (B) populated areas", CSQA, "B"),
    (" populated areas", CSQA, "B"),
    (" (c)", CSQA, "C"),
    (" Yes", (), "Yes"),
    (" no.", (), "No"),
    (" the", CSQA, None),
])
def test_extract_label_only(output, choices, expected):
    assert extract_answer(output, choices, label_only=True) == expected


def test_parse_answer_label_wins_over_text():
    assert parse_answer("(A) populated areas", CSQA) == "A"  # the stated label decides


def test_split_reasoning():
    assert split_reasoning(" Milk spoils. So the answer is (B) fridge.") == ("Milk spoils.", "(B) fridge.")
    assert split_reasoning(" no marker here") == ("no marker here", None)


# ----------------------------------------------------------------------------- format
def test_is_well_formatted():
    good = " People live in towns. So the answer is (B) populated areas."
    toks = good.split()
    assert is_well_formatted(good, "B", toks)
    assert not is_well_formatted(" The answer is (B).", "B", " The answer is (B).".split())  # loose marker only
    assert not is_well_formatted(" So the answer is maybe.", None, ["x"])  # unparsable
    imitative = good + " Question: Where do birds live? Answer:"
    assert not is_well_formatted(imitative, "B", imitative.split())
    loop = " the people go to the town and" * 6 + " So the answer is (B)."
    loop_toks = loop.split()
    assert repetition_rate(loop_toks, 3) > 0.3
    assert not is_well_formatted(loop, "B", loop_toks)
    assert is_well_formatted(loop, "B", loop_toks, max_rep=0.9)  # the threshold is a knob


# ----------------------------------------------------------------------------- aggregation
def test_compute_metrics_hand_computed():
    m = compute_metrics([True, False], [True, True], [10, 20], [[1, 2, 1, 2], [5, 6, 7, 8]])
    assert m == {"acc": 0.5, "fmt": 1.0, "len": 15.0, "rep": 0.25, "n": 2}


def test_label_only_reports_accuracy_only():
    m = compute_metrics([True, True, False, True])
    assert m == {"acc": 0.75, "fmt": None, "len": None, "rep": None, "n": 4}


# ----------------------------------------------------------------------------- lenient Acc, prefix Fmt
@pytest.mark.parametrize("output,choices,expected", [
    # strict extraction works: lenient is the same
    (" People live in towns. So the answer is (B) populated areas.", CSQA, "B"),
    # no answer sentence: the LAST candidate in the output ((A) label first, then option text "apartment")
    (" Not (A), he likes the apartment", CSQA, "D"),
    # a bare label standing alone at the end
    (" People are in cities, so B.", CSQA, "B"),
    # the article "A" is not a candidate; "the desert" is
    (" A man went to the desert", CSQA, "C"),
    # marker present but unparsable tail: fall back to the last candidate anywhere
    (" Crowds are in populated areas. So the answer is somewhere.", CSQA, "B"),
    (" Maybe yes, or maybe no", (), "No"),
    (" It is true that fish swim", (), "Yes"),
    (" the the the", CSQA, None),
    (" nothing here", (), None),
])
def test_extract_answer_lenient(output, choices, expected):
    from sert.metrics import extract_answer_lenient
    assert extract_answer_lenient(output, choices) == expected


def test_answer_candidates_in_order():
    from sert.metrics import answer_candidates
    # (A) label at 5, "apartment" (D) later, bare "E" at the end; "A race" (article) skipped
    assert answer_candidates(" Not (A). A race track, an apartment or E", CSQA) == ["A", "A", "D", "E"]
    assert answer_candidates("yes no TRUE", ()) == ["Yes", "No", "Yes"]


@pytest.mark.parametrize("output,expected", [
    (" People live in towns. So the answer is (B) populated areas.", True),
    # trailing imitation / continuation after the answer sentence is allowed (strict Fmt fails these)
    (" People live in towns. So the answer is (B). Question: Where do birds live? Answer: (A)", True),
    (" People live in towns. So the answer is (B) populated areas. towns towns towns towns towns", True),
    # no reasoning before the answer sentence
    (" So the answer is (B).", False),
    # unparsable answer
    (" People live in towns. So the answer is somewhere.", False),
    # loose marker only
    (" People live in towns. The answer is (B).", False),
    # imitation inside the prefix
    (" Question: where? So the answer is (B).", False),
])
def test_is_prefix_formatted(output, expected):
    from sert.metrics import is_prefix_formatted
    assert is_prefix_formatted(output, CSQA) is expected


def test_compute_metrics_lenient_and_prefix_are_added_only_when_given():
    m = compute_metrics([True, False], [True, False], [10, 20], [[1], [2]], correct_lenient=[True, True],
                        format_prefix=[True, False])
    assert m["acc"] == 0.5 and m["acc_lenient"] == 1.0 and m["fmt"] == 0.5 and m["fmt_prefix"] == 0.5
    assert "acc_lenient" not in compute_metrics([True])
