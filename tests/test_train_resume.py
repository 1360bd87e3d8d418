"""Training resume: SIGKILL the real CLI at each durable point of a training step (``sert.faults``), rerun,
and compare with an uninterrupted run of the same seed: summary and final weights. Plus invalid
checkpoints, weights-only checkpoints and the final-save order, in process."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import CSQA_ROWS, run_cli, run_dirs
from sert.artifacts import read_json
from sert.models import load_model
from sert.training.base import TOTALS
from sert.training.data import Example
from sert.training.loop import LoopTrainer
from sert.training.sft import HFTrainer

TINY = {"n_layer": 1, "n_embd": 16, "n_head": 2, "n_positions": 256, "seed": 0}
EXAMPLES = [Example(f"Question: what is {i} plus one? Answer:", f" {i} and one. So the answer is {i + 1}.")
            for i in range(8)]
# 3 training rows, batch 1: 3 steps per epoch, 9 steps in 3 epochs, a checkpoint after each epoch
SAME = ("train_loss", "steps", "epochs", "tokens", "padded_tokens", "examples", "precision")
pytestmark = pytest.mark.usefixtures("one_torch_thread")  # the in-process tests compare weights bit for bit


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("data")
    (d / "csqa.json").write_text(json.dumps(CSQA_ROWS))
    (d / "csqa.split.json").write_text(json.dumps({"train": [0, 1, 2], "test": [3]}))
    return d / "csqa.json", d / "csqa.split.json"


def finetune(data, out: Path, trainer: str, *, check=True, env=None):
    return run_cli("stage=finetune", "stage.steps=[finetune]", "model=tiny", "device=cpu", f"trainer={trainer}",
                   f"dataset.path={data[0]}", f"dataset.split_file={data[1]}", "trainer.epochs=3",
                   "trainer.batch_size=1", "trainer.logging_steps=1", "seed=7", out=out, check=check, env=env)


def entry(out: Path) -> Path:
    """The (single) finetune cache entry under ``out``."""
    (d,) = (p for p in (out / "cache" / "finetune").iterdir() if p.is_dir())
    return d


def last_summary(out: Path) -> dict:
    return read_json(run_dirs(out)[-1] / "run.json")["steps"][0]["summary"]


@pytest.fixture(scope="module")
def reference(data, tmp_path_factory):
    """One uninterrupted run per trainer: (summary, weights, log_history)."""
    runs = {}
    for trainer in ("sft", "loop"):
        out = tmp_path_factory.mktemp(f"ref-{trainer}")
        finetune(data, out, trainer)
        d = entry(out)
        runs[trainer] = (last_summary(out), load_file(d / "model" / "model.safetensors"),
                         read_json(d / "log_history.json"))
    return runs


@pytest.mark.parametrize("trainer", ["sft", "loop"])
@pytest.mark.parametrize("point", ["train.checkpoint_saved:1", "train.checkpoint_writing:2", "train.model_saved:1"])
def test_killed_training_resumes_to_the_same_result(data, reference, tmp_path, trainer, point):
    ckpt = {"sft": "checkpoint-3", "loop": "step-3"}[trainer]  # after epoch 1
    killed = finetune(data, tmp_path, trainer, check=False, env={"SERT_KILL_AT": point})
    assert killed.returncode == -9, killed.stderr[-3000:]
    d = entry(tmp_path)
    assert not (d / "COMPLETE.json").exists()
    names = sorted(p.name for p in (d / "checkpoints").iterdir())
    if point.startswith("train.model_saved"):
        assert (d / "model" / "training_info.json").exists()
        assert names == [ckpt.replace("3", "9")]  # the final model is saved before the checkpoints go
    elif point.startswith("train.checkpoint_writing"):
        assert names == [".staging-6", ckpt]  # the half-written epoch-2 checkpoint never got its name
    else:
        assert names == [ckpt]

    rerun = finetune(data, tmp_path, trainer)
    log = rerun.stdout + rerun.stderr
    summary = last_summary(tmp_path)
    if point.startswith("train.model_saved"):
        assert "not training again" in log and "resuming training" not in log
        assert summary["resumed_from"] is None
    else:
        assert f"resuming training from {d / 'checkpoints' / ckpt}" in log
        assert summary["resumed_from"] == ckpt
    assert (d / "COMPLETE.json").exists() and not (d / "checkpoints").exists()

    ref_summary, ref_weights, ref_history = reference[trainer]
    assert {k: summary[k] for k in SAME} == {k: ref_summary[k] for k in SAME}
    assert summary.get("tokens_total") == ref_summary.get("tokens_total")
    assert summary["train_seconds"] > 0
    weights = load_file(d / "model" / "model.safetensors")
    # CPU training of this model is deterministic: the resumed weights are bit-identical
    assert weights.keys() == ref_weights.keys()
    assert all(torch.equal(weights[k], ref_weights[k]) for k in weights)
    losses = lambda h: [(r["step"], r["loss"]) for r in h if "loss" in r]  # noqa: E731
    assert losses(read_json(d / "log_history.json")) == losses(ref_history)


# ----------------------------------------------------------------------------- in process
def tiny():
    return load_model("tiny", random_init=TINY, device="cpu")


def flat(model) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in model.parameters()])


@pytest.mark.parametrize("cls", [HFTrainer, LoopTrainer])
def test_invalid_newest_checkpoint_is_deleted_and_the_previous_one_used(cls, tmp_path, caplog):
    cfg = dict(max_steps=4, batch_size=4, save_strategy="steps", save_steps=2, save_total_limit=2, logging_steps=1)
    model, tok = tiny()
    first = cls(**cfg).train(model, tok, EXAMPLES, tmp_path / "a")
    ckpts = cls(**cfg).checkpoints(tmp_path / "a" / "checkpoints")
    assert [p.name.split("-")[-1] for p in ckpts] == ["2", "4"]
    newest = ckpts[-1]
    weights = "model.safetensors" if cls is HFTrainer else "model.pt"
    blob = (newest / weights).read_bytes()
    (newest / weights).write_bytes(blob[: len(blob) // 2])  # a torn write (e.g. an older, in-place save)
    again, tok = tiny()
    second = cls(**cfg).train(again, tok, EXAMPLES, tmp_path / "a")
    assert "is incomplete" in caplog.text and weights in caplog.text
    assert second["resumed_from"] == ckpts[0].name and second["steps"] == 4
    for k in ("train_loss", "tokens", "padded_tokens", "steps"):
        assert second[k] == first[k]
    assert torch.equal(flat(again), flat(model))
    done, tok = tiny()  # killed after the last checkpoint, before the final save: nothing left to train
    third = cls(**cfg).train(done, tok, EXAMPLES, tmp_path / "a")
    assert third["resumed_from"] == ckpts[-1].name
    assert all(third[k] == first[k] for k in ("train_loss", "tokens", "padded_tokens", "steps", "epochs"))
    assert torch.equal(flat(done), flat(model))

    if cls is HFTrainer:  # the original symptom: transformers' files missing from checkpoint-N
        (ckpts[-1] / "trainer_state.json").unlink()
        assert "trainer_state.json missing" in cls(**cfg).problem(ckpts[-1])
    (ckpts[-1] / TOTALS).unlink()  # a checkpoint without its running totals is not resumed from either
    assert "sert_totals.json missing" in cls(**cfg).problem(ckpts[-1])


@pytest.mark.parametrize("cls", [HFTrainer, LoopTrainer])
def test_weights_only_checkpoints_resume_inexactly(cls, tmp_path, caplog):
    cfg = dict(max_steps=4, batch_size=4, save_strategy="steps", save_steps=2, save_total_limit=1,
               checkpoint_optimizer=False, logging_steps=1)
    full, tok = tiny()
    cls(**{**cfg, "max_steps": 4}).train(full, tok, EXAMPLES, tmp_path / "full")
    part, tok = tiny()
    cls(**{**cfg, "max_steps": 2}).train(part, tok, EXAMPLES, tmp_path / "part")
    (ckpt,) = (tmp_path / "part" / "checkpoints").iterdir()
    assert not (ckpt / "optimizer.pt").exists()
    resumed, tok = tiny()
    s = cls(**cfg).train(resumed, tok, EXAMPLES, tmp_path / "part")
    assert s["resumed_from"] == ckpt.name and s["steps"] == 4
    assert "optimizer moments restart" in caplog.text
    assert not torch.equal(flat(resumed), flat(full))  # Adam restarted at step 2: not the same weights
    assert torch.allclose(flat(resumed), flat(full), atol=0.05)  # ...but the same training


@pytest.mark.parametrize("cls", [HFTrainer, LoopTrainer])
def test_each_save_leaves_one_checkpoint(cls, tmp_path):
    cfg = dict(max_steps=3, batch_size=4, save_strategy="steps", save_steps=1, save_total_limit=1)
    model, tok = tiny()
    seen = []
    t = cls(**cfg)
    real = t.publish
    t.publish = lambda staged, ckpt_dir: seen.append(sorted(p.name for p in real(staged, ckpt_dir).parent.iterdir()
                                                            if not p.name.startswith(".")))
    t.train(model, tok, EXAMPLES, tmp_path)
    prefix = "checkpoint" if cls is HFTrainer else "step"
    assert seen == [[f"{prefix}-1"], [f"{prefix}-2"], [f"{prefix}-3"]]
