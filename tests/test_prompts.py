from __future__ import annotations

import pytest

from sert.data import Choice, Record
from sert.prompts import Prompts

CSQA = Record("1", "Where? Answer choices: (A) oven, (B) fridge.", "B", (Choice("A", "oven"), Choice("B", "fridge")))
SQA = Record("2", "Is water wet?", "Yes")


def test_paper_formats():
    p = Prompts()
    assert p.generation_prompt(SQA) == "Question: Is water wet? Answer:"
    assert p.teacher_prompt(SQA) == "Question: Is water wet?. Answer: Let's think step by step."
    prompt, completion = p.training_pair("self_train", SQA, "Water is a liquid.")
    assert prompt + completion == "Question: Is water wet?. Answer: Water is a liquid. So the answer is Yes."
    assert prompt == "Question: Is water wet?. Answer:"
    prompt, completion = p.training_pair("distill", CSQA, " Milk spoils. ")
    assert prompt + completion == (
        "Question: Where? Answer choices: (A) oven, (B) fridge.. Answer: Let's think step by step. "
        "Milk spoils. So the answer is (B) fridge.")
    assert completion.startswith(" Milk")
    prompt, completion = p.training_pair("label_only", CSQA)
    assert (prompt, completion) == ("Question: Where? Answer choices: (A) oven, (B) fridge. Answer:", " (B) fridge")


def test_templates_overridable():
    p = Prompts(generate="Q: {question}\nA:", answer_choice="{label}")
    assert p.generation_prompt(SQA) == "Q: Is water wet?\nA:"
    assert p.training_pair("label_only", CSQA)[1] == " B"


def test_unknown_kind():
    with pytest.raises(AttributeError):
        Prompts().training_pair("nope", SQA)
