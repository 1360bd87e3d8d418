"""The paper's text formats, in one place. Each template is overridable through the ``prompts`` config.

Placeholders: ``{question}`` (question text, answer choices included for CommonsenseQA),
``{reasoning}`` (a reasoning path r or teacher reasoning R), ``{answer}`` (the rendered gold answer).
"""

from __future__ import annotations

from dataclasses import dataclass

from sert.data import Record


@dataclass
class Prompts:
    """Also the schema of the ``prompts`` config section (``sert.schema.Config.prompts``)."""

    # II-A1: "Question: q_i Answer:" — the zero-shot generation prompt of the latent-path sampler.
    generate: str = "Question: {question} Answer:"
    # II-B: "Question: q_i. Answer: r_i So the answer is a_i." — SERT self-training text.
    self_train: str = "Question: {question}. Answer: {reasoning} So the answer is {answer}."
    # II-C1: the zero-shot-CoT teacher prompt ...
    teacher: str = "Question: {question}. Answer: Let's think step by step."
    # ... and the distillation text built from its reasoning R_i.
    distill: str = "Question: {question}. Answer: Let's think step by step. {reasoning} So the answer is {answer}."
    # III-C baseline (1): fine-tuning on labels alone.
    label_only: str = "Question: {question} Answer: {answer}"
    # How a gold answer is written after "So the answer is": choice label + text for multiple choice
    # (the paper does not say; "(A) ignore" keeps both forms extractable), the label itself for yes/no.
    answer_choice: str = "({label}) {text}"
    answer_binary: str = "{label}"

    def answer(self, rec: Record) -> str:
        if rec.choices:
            return self.answer_choice.format(label=rec.answer, text=rec.answer_text)
        return self.answer_binary.format(label=rec.answer, text=rec.answer_text)

    def generation_prompt(self, rec: Record) -> str:
        return self.generate.format(question=rec.question)

    def teacher_prompt(self, rec: Record) -> str:
        return self.teacher.format(question=rec.question)

    def training_pair(self, kind: str, rec: Record, reasoning: str = "") -> tuple[str, str]:
        """(prompt, completion) of a training example; the loss may be masked over the prompt.

        ``kind`` is ``self_train``, ``distill`` or ``label_only``. The prompt is the text up to and
        including "Answer:" (plus "Let's think step by step." for distillation), the completion is the
        rest, so prompt + completion is exactly the template's text."""
        template = getattr(self, kind)
        full = template.format(question=rec.question, reasoning=reasoning.strip(), answer=self.answer(rec))
        cut = {"self_train": "{reasoning}", "distill": "{reasoning}", "label_only": "{answer}"}[kind]
        head = template.split(cut, 1)[0].format(question=rec.question)
        if not full.startswith(head):  # cannot happen for well-formed templates
            raise ValueError(f"prompts.{kind}: prompt part {head!r} is not a prefix of the rendered text")
        # The separating space belongs to the completion: tokenizers attach it to the next word.
        head = head.rstrip()
        return head, full[len(head):]
