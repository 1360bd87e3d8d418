"""Epoch selection on a held-out validation slice (``trainer.select=val_acc``, sert.training.select): the model
kept is the epoch best on validation, for both trainers, also after a crash while validating; and through the real
CLI, the validation questions are disjoint from the training rows and from the test split."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import CSQA_ROWS, run_cli, run_dirs
from sert.artifacts import read_json, read_jsonl
from sert.data import load_records, make_record
from sert.models import load_model
from sert.training.data import Example
from sert.training.loop import LoopTrainer
from sert.training.select import EpochSelector, validation_slice
from sert.training.sft import HFTrainer

TINY = {"n_layer": 1, "n_embd": 16, "n_head": 2, "n_positions": 256, "seed": 0}
EXAMPLES = [Example(f"Question: what is {i} plus one? Answer:", f" {i} and one. So the answer is {i + 1}.")
            for i in range(8)]
CFG = dict(epochs=4, batch_size=4, save_strategy="epoch", save_total_limit=None, logging_steps=1)  # 2 steps/epoch
pytestmark = pytest.mark.usefixtures("one_torch_thread")  # bitwise weight comparisons


def flat(model) -> torch.Tensor:
    return torch.cat([p.detach().flatten().float() for p in model.parameters()])


class Peaked:
    """A validation score that peaks at given weights: -|distance from the initial weights - radius|, so the
    epoch whose weights lie at ``radius`` scores best (0). ``crash_at``: raise on that call (a kill while
    validating, after the epoch's checkpoint was published)."""

    def __init__(self, init: torch.Tensor, radius: float, crash_at: int | None = None):
        self.init, self.radius, self.crash_at, self.calls = init, radius, crash_at, 0

    def __call__(self, model, tok) -> float:
        self.calls += 1
        if self.calls == self.crash_at:
            raise RuntimeError("killed while validating")
        return -abs(float((flat(model) - self.init).norm()) - self.radius)


def test_validation_slice_is_seeded_and_leaves_training_rows():
    recs = [make_record({"question": f"q{i}?", "answer": "Yes"}, str(i)) for i in range(20)]
    a = validation_slice(recs, 0.25, seed=0)
    assert len(a) == 5 and a == validation_slice(recs, 0.25, seed=0) and a != validation_slice(recs, 0.25, seed=1)
    assert [r.qid for r in a] == sorted((r.qid for r in a), key=int)  # the split's order
    assert len(validation_slice(recs[:2], 0.9, seed=0)) == 1  # never the whole split
    with pytest.raises(ValueError, match="val_fraction"):
        validation_slice(recs, 1.0, seed=0)


@pytest.mark.parametrize("cls", [HFTrainer, LoopTrainer])
def test_best_epoch_is_kept_and_a_crash_while_validating_resumes_to_the_same_choice(cls, tmp_path):
    ckpt_name = {HFTrainer: "checkpoint-{}", LoopTrainer: "step-{}"}[cls]
    weights_of = {HFTrainer: lambda p: load_file(p / "model.safetensors"),
                  LoopTrainer: lambda p: torch.load(p / "model.pt", weights_only=True)}[cls]
    # a reference run without selection: every epoch's checkpoint, and how far epoch 2 moved from the start
    model, tok = load_model("tiny", random_init=TINY, device="cpu")
    init = flat(model)
    cls(**CFG).train(model, tok, EXAMPLES, tmp_path / "ref")
    epoch2 = weights_of(tmp_path / "ref" / "checkpoints" / ckpt_name.format(4))  # 2 steps per epoch
    epoch2_model, _ = load_model("tiny", random_init=TINY, device="cpu")
    epoch2_model.load_state_dict(epoch2, strict=False)  # (safetensors leaves out the tied lm_head copy)
    radius = float((flat(epoch2_model) - init).norm())

    def run(out: Path, crash_at: int | None) -> tuple[dict, torch.Tensor]:
        m, t = load_model("tiny", random_init=TINY, device="cpu")
        trainer = cls(**CFG)
        trainer.selector = EpochSelector(out, Peaked(init, radius, crash_at), questions=3)
        summary = trainer.train(m, t, EXAMPLES, out)
        return trainer.selector.finish(m, t, summary["steps"], summary["epochs"]), flat(m)

    sel, weights = run(tmp_path / "a", None)
    scores = [s["val_acc"] for s in sel["scores"]]
    assert [s["step"] for s in sel["scores"]] == [2, 4, 6, 8] and [s["epoch"] for s in sel["scores"]] == [1, 2, 3, 4]
    assert max(scores) == scores[1] and sel["best_step"] == 4 and sel["best_epoch"] == 2  # argmax of the records
    assert sel["best_val_acc"] == max(scores)
    assert torch.equal(weights, flat(epoch2_model))  # the model kept is epoch 2's, not the last epoch's

    with pytest.raises(RuntimeError, match="killed while validating"):
        run(tmp_path / "b", crash_at=2)  # epoch 2's checkpoint is on disk, its validation never finished
    assert [s["step"] for s in read_json(tmp_path / "b" / "select" / "scores.json")["scores"]] == [2]
    resumed, resumed_weights = run(tmp_path / "b", None)
    assert {k: resumed[k] for k in ("scores", "best_step", "best_epoch")} == {k: sel[k] for k in ("scores", "best_step", "best_epoch")}
    assert torch.equal(resumed_weights, weights)


def test_cli_select_holds_out_training_questions_and_keeps_the_best_epoch(tmp_path: Path):
    d = tmp_path / "data"
    d.mkdir()
    rows = CSQA_ROWS + [{**r, "question": r["question"].replace("?", " today?", 1)} for r in CSQA_ROWS]  # 8 questions
    (d / "csqa.json").write_text(json.dumps(rows))
    (d / "csqa.split.json").write_text(json.dumps({"train": [0, 1, 2, 4, 5, 6], "test": [3, 7]}))
    out = tmp_path / "out"
    run_cli("stage=finetune", "stage.steps=[finetune]", "model=tiny", "device=cpu", "trainer=loop",
            f"dataset.path={d / 'csqa.json'}", f"dataset.split_file={d / 'csqa.split.json'}", "trainer.epochs=3",
            "trainer.batch_size=2", "trainer.select=val_acc", "trainer.val_fraction=0.34", "trainer.keep_checkpoints=true",
            "trainer.save_total_limit=null", "evaluate.label_only_max_new_tokens=3", "seed=3", out=out)
    step = read_json(run_dirs(out)[0] / "run.json")["steps"][0]
    sel, entry = step["summary"]["select"], Path(step["dir"])
    train = load_records(path=str(d / "csqa.json"), split="train", split_file=str(d / "csqa.split.json"))
    test = load_records(path=str(d / "csqa.json"), split="test", split_file=str(d / "csqa.split.json"))
    val = [r for r in train[0] if r.qid in sel["val_qids"]]
    assert len(val) == 2 and not set(sel["val_qids"]) & {r.qid for r in test[0]}  # from the training split only
    trained = [r["prompt"] for r in read_jsonl(entry / "train_data.jsonl")]
    assert len(trained) == 4 and not any(f"Question: {r.question} Answer:" == p for r in val for p in trained)
    scores = [s["val_acc"] for s in sel["scores"]]
    assert len(scores) == 3 and sel["best_val_acc"] == max(scores)
    assert sel["best_step"] == sel["scores"][scores.index(max(scores))]["step"]  # the earliest best epoch
    assert step["summary"]["metrics"]["finetune/selected_epoch"] == sel["best_epoch"]
    kept = load_file(entry / "model" / "model.safetensors")
    best = torch.load(entry / "checkpoints" / f"step-{sel['best_step']}" / "model.pt", weights_only=True)
    assert all(torch.equal(kept[k], best[k]) for k in kept)
