"""docs/extending.md, run as written: its files (a filter class and preset, a trainer class and config, a
stage) are read from the page (and must equal ``examples/my_sert/``), written into a temporary module directory (on PYTHONPATH) and a
temporary config directory (on ``hydra.searchpath``), and used through the real CLI with ``filter=<new>``,
``trainer=<new>`` and ``stage=<new>``: no file of sert is edited."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from conftest import ROOT, compose, run_cli, run_dirs

PAGE = ROOT / "docs" / "extending.md"
EXAMPLE = ROOT / "examples" / "my_sert"
Q = "Where do you keep milk cold? Answer choices: (A) oven, (B) fridge, (C) shelf, (D) car, (E) bag."


def readme_files() -> dict[str, str]:
    """{relative path: text} of every fenced block of docs/extending.md whose first line is ``# <path>``."""
    section = PAGE.read_text(encoding="utf-8")
    files = {}
    for block in re.findall(r"```(?:python|yaml)\n(.*?)```", section, re.S):
        first = block.splitlines()[0]
        m = re.fullmatch(r"# (\S+\.(?:py|yaml))", first)
        if m:
            files[m.group(1)] = block
    return files


def test_the_page_shows_the_example_files_as_they_are():
    """docs/extending.md's blocks and the shipped examples/my_sert/ are the same files (neither drifts)."""
    files = readme_files()
    shipped = {str(p.relative_to(EXAMPLE)): p.read_text(encoding="utf-8")
               for p in EXAMPLE.rglob("*") if p.is_file() and p.suffix in (".py", ".yaml")}
    assert files == shipped


@pytest.fixture
def my_sert(tmp_path: Path) -> Path:
    """The page's ``my_sert/`` directory: my_components.py and conf/{filter,trainer,stage}/*.yaml."""
    root = tmp_path / "my_sert"
    files = readme_files()
    assert {"my_components.py", "conf/filter/max_length.yaml", "conf/trainer/frozen_embeddings.yaml",
            "conf/stage/prepare.yaml"} <= set(files), sorted(files)
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text, encoding="utf-8")
    return root


def ext_cli(my_sert: Path, *overrides: str, out: Path, check: bool = True):
    """``sert`` as docs/extending.md runs it: my_sert on PYTHONPATH, my_sert/conf on the config search path."""
    env = {"PYTHONPATH": f"{ROOT / 'src'}:{my_sert}"}
    return run_cli(*overrides, f"hydra.searchpath=[file://{my_sert / 'conf'}]", out=out, check=check, env=env)


def test_a_new_filter_is_one_class_and_one_yaml(my_sert: Path, tmp_path: Path):
    """filter=max_length: the full chain, then MaxLengthFilter (its knob overridden like any filter's)."""
    texts = {"short": "it is cold in there, so milk keeps",                                     # 34 bytes
             "long": "the milk goes in the fridge because the cold slows the bacteria down",  # 68 bytes
             "longer": "a fridge keeps food cold and milk is food that spoils fast when it is warm"}  # 74
    cands = tmp_path / "cands.jsonl"
    cands.write_text("".join(json.dumps({"qid": qid, "question": Q, "answer": "B", "text": t, "ppl": 9.0}) + "\n"
                             for qid, t in texts.items()))
    out = tmp_path / "out"
    proc = ext_cli(my_sert, "stage=filter", "filter=max_length", "filter.max_length.max_tokens=50",
                   "model=tiny", "logger=none", f"filter.input={cands}", "filter.length.min_tokens=1",
                   "filter.rep2.max_rate=1.0", out=out, check=False)
    assert proc.returncode == 0, proc.stderr[-4000:]
    (run,) = run_dirs(out)
    stats = json.loads((run / "filter" / "filter_stats.json").read_text())
    assert [f["filter"] for f in stats["funnel"]] == ["pattern", "length", "rep2", "perplexity", "max_length"]
    assert stats["funnel"][-1] == {"filter": "max_length", "in": 3, "kept": 1, "dropped": 2, "questions_with_path": 1}
    rejected = [json.loads(line) for line in (run / "filter" / "rejected.jsonl").read_text().splitlines()]
    assert sorted((r["qid"], r["dropped_by"], r["reason"]) for r in rejected) == [
        ("long", "max_length", "max_length: 68 > 50 tokens"), ("longer", "max_length", "max_length: 74 > 50 tokens")]
    selected = [json.loads(line) for line in (run / "filter" / "selected.jsonl").read_text().splitlines()]
    assert [r["qid"] for r in selected] == ["short"]
    manifest = json.loads((run / "run.json").read_text())
    assert manifest["config"]["filter"]["max_length"]["_target_"] == "my_components.MaxLengthFilter"


def test_a_new_trainer_is_one_class_and_one_yaml(my_sert: Path, tmp_path: Path, csqa_files):
    """trainer=frozen_embeddings: the loop trainer's settings, the new class's training (embeddings unchanged)."""
    import torch

    from omegaconf import OmegaConf

    from sert.models import load_model

    data, split = csqa_files
    out = tmp_path / "out"
    ext_cli(my_sert, "stage=finetune", "stage.steps=[finetune]", "trainer=frozen_embeddings", "model=tiny",
            "device=cpu", f"dataset.path={data}", f"dataset.split_file={split}", "trainer.epochs=1",
            "trainer.batch_size=1", "logger=none", out=out)
    (run,) = run_dirs(out)
    manifest = json.loads((run / "run.json").read_text())
    (step,) = manifest["steps"]
    assert manifest["config"]["trainer"]["_target_"] == "my_components.FrozenEmbeddingsTrainer"
    assert manifest["config"]["trainer"]["lr_scheduler"] == "constant"  # inherited from loop.yaml / sft.yaml
    trained, _ = load_model(str(Path(step["dir"]) / "model"), device="cpu")
    base, _ = load_model(**OmegaConf.to_container(compose("model=tiny").model, resolve=True), device="cpu")
    emb = base.get_input_embeddings().weight
    assert step["summary"]["trainer"] == "frozen_embeddings" and step["summary"]["frozen_parameters"] == emb.numel()
    assert torch.equal(trained.get_input_embeddings().weight, emb)  # frozen
    changed = [n for n, p in trained.named_parameters() if not torch.equal(p, dict(base.named_parameters())[n])]
    assert changed  # the rest trained


def test_a_new_stage_is_one_yaml(my_sert: Path):
    """stage=prepare: the page's stage composes and builds the pipeline [filter, teacher]."""
    from hydra.utils import instantiate

    cfg = compose("stage=prepare", f"hydra.searchpath=[file://{my_sert / 'conf'}]")
    stage = instantiate(cfg.stage)
    assert (stage.name, stage.steps) == ("prepare", ["filter", "teacher"])
