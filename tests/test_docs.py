"""Docs that cannot rot: every shell block in README.md and docs/*.md carries a marker, and the test runs it.

The marker is an HTML comment on the line before the fence (GitHub and MkDocs do not render it):

- ``<!-- doc-test: run -->``     the block runs as written (bash, ``set -euo pipefail``), offline: it must
  finish quickly (tiny model, or the real data in ``../shared`` and a few questions);
- ``<!-- doc-test: slow -->``    the block runs as written under ``pytest -m slow`` (minutes: a real model);
  the default suite composes it like a ``compose`` block;
- ``<!-- doc-test: compose -->`` the block runs with ``sert`` and ``sert-report`` replaced by recorders:
  every ``sert`` command's config is composed as ``sert`` would (sweeps: every swept value at least once)
  and checked (``sert.cli.check_config``, the stage built), every ``sert-report`` command's options parsed;
  for commands that need a GPU, the Hub, an API key or hours;
- ``<!-- doc-test: skip: <reason> -->`` not run (installs, cluster launchers, placeholders); the reason is
  required.

Blocks run with the repository as the working directory (``../shared`` is the data folder next to the
clone), ``sert`` = this checkout's ``python -m sert``, outputs under a temporary ``SERT_OUTPUT_DIR`` and
Hugging Face / W&B offline. Blocks that name ``../shared`` skip when it is missing.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import ROOT

SHELLS = {"bash", "sh", "shell", "console"}
MARKER = re.compile(r"<!--\s*doc-test:\s*(run|slow|compose|skip)\s*(?::\s*(.*?))?\s*-->")
# pages other contributors add in parallel: links to them may resolve only after their merge
PLANNED = {"docs/reliability.md", "docs/distributed.md", "docs/wandb.md"}
SHARED = Path(os.environ.get("SERT_SHARED_DIR", ROOT.parent / "shared"))


@dataclass
class Block:
    file: Path
    line: int  # 1-based line of the opening fence
    lang: str
    text: str
    mode: str | None
    reason: str

    @property
    def id(self) -> str:
        return f"{self.file.relative_to(ROOT)}:{self.line}"


def doc_files() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def blocks(path: Path) -> list[Block]:
    """Every fenced block of ``path`` with the doc-test marker (if any) on the line before it."""
    lines = path.read_text(encoding="utf-8").splitlines()
    out, i = [], 0
    while i < len(lines):
        m = re.match(r"^(\s*)```(\w*)", lines[i])
        if not m:
            i += 1
            continue
        start, lang = i, m.group(2)
        j = i + 1
        while j < len(lines) and not lines[j].strip().startswith("```"):
            j += 1
        prev = next((lines[k] for k in range(start - 1, -1, -1) if lines[k].strip()), "")
        mk = MARKER.search(prev)
        out.append(Block(path, start + 1, lang, "\n".join(lines[start + 1:j]) + "\n",
                         mk.group(1) if mk else None, (mk.group(2) or "") if mk else ""))
        i = j + 1
    return out


def shell_blocks() -> list[Block]:
    return [b for f in doc_files() for b in blocks(f) if b.lang in SHELLS]


def test_every_shell_block_is_marked():
    unmarked = [b.id for b in shell_blocks() if b.mode is None]
    assert not unmarked, f"shell blocks without a <!-- doc-test: ... --> marker: {unmarked}"
    no_reason = [b.id for b in shell_blocks() if b.mode == "skip" and not b.reason]
    assert not no_reason, f"doc-test: skip needs a reason: {no_reason}"


def test_the_readme_fits_300_lines_and_links_resolve():
    """README.md stays an entry point; every relative link in README/docs points at a file that exists (or one of
    the pages written elsewhere and listed in ``PLANNED``)."""
    assert len((ROOT / "README.md").read_text(encoding="utf-8").splitlines()) <= 300
    broken = []
    for f in doc_files():
        for target in re.findall(r"\]\(([^)\s]+)\)", f.read_text(encoding="utf-8")):
            if re.match(r"^(https?:|mailto:|#)", target):
                continue
            path = (f.parent / target.split("#")[0]).resolve()
            rel = str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)
            if not path.exists() and rel not in PLANNED:
                broken.append(f"{f.relative_to(ROOT)} -> {target}")
    assert not broken, broken


# ----------------------------------------------------------------------------- running a block
RECORDER = """#!/usr/bin/env bash
# records one command line (NUL-separated argv, then a newline record separator) instead of running it
{{ printf '%s\\0' "{name}" "$@"; printf '\\n\\0'; }} >> "$DOCTEST_RECORD"
"""
RUNNER = """#!/usr/bin/env bash
export PYTHONPATH="{src}${{PYTHONPATH:+:$PYTHONPATH}}"
exec "{python}" -m {module} "$@"
"""


def run_block(block: Block, tmp: Path, mode: str, timeout: int) -> tuple[subprocess.CompletedProcess, Path]:
    if "../shared" in block.text and not (SHARED / "data").is_dir():
        pytest.skip(f"{block.id} uses ../shared, which is missing")
    if "../shared" in block.text and SHARED.resolve() != (ROOT.parent / "shared").resolve():
        pytest.skip(f"{block.id} uses ../shared, which is not next to this checkout")
    bindir = tmp / "bin"
    bindir.mkdir()
    record = tmp / "record"
    for name, module in (("sert", "sert"), ("sert-report", "sert.report")):
        script = (RECORDER.format(name=name) if mode == "compose"
                  else RUNNER.format(src=ROOT / "src", python=sys.executable, module=module))
        (bindir / name).write_text(script)
        (bindir / name).chmod(0o755)
    env = {**os.environ, "PATH": f"{bindir}:{os.environ['PATH']}", "SERT_OUTPUT_DIR": str(tmp / "outputs"),
           "DOCTEST_RECORD": str(record), "WANDB_MODE": "disabled", "HF_HUB_OFFLINE": "1",
           "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HYDRA_FULL_ERROR": "1"}
    env.pop("OPENAI_API_KEY", None)
    script = tmp / "block.sh"
    script.write_text("set -euo pipefail\n" + block.text)
    proc = subprocess.run(["bash", str(script)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    return proc, record


def recorded(record: Path) -> list[list[str]]:
    if not record.exists():
        return []
    cmds = record.read_bytes().decode().split("\n\0")
    return [c.rstrip("\0").split("\0") for c in cmds if c.strip("\0")]


HYDRA_FLAGS_WITH_VALUE = {"--cfg", "-c", "--package", "-p", "--config-name", "-cn", "--config-dir", "-cd",
                          "--info", "-i"}
HYDRA_FLAGS = {"-m", "--multirun", "--resolve", "-h", "--help", "--hydra-help", "-r", "--run"}


def overrides_of(argv: list[str]) -> list[str]:
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
            continue
        if a in HYDRA_FLAGS_WITH_VALUE:
            skip = a not in ("--info", "-i")  # --info takes an optional value; none in the docs
            continue
        if a in HYDRA_FLAGS:
            continue
        out.append(a)
    return out


def expand_sweeps(overrides: list[str]) -> list[list[str]]:
    """A multirun's overrides as single-job override lists covering every swept value at least once."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(overrides)
    values = []
    for text, o in zip(overrides, parsed):
        if o.is_sweep_override():
            key = o.get_key_element()
            values.append([f"{key}={v}" for v in o.sweep_string_iterator()])
        else:
            values.append([text])
    n = max(len(v) for v in values) if values else 1
    return [[v[i % len(v)] for v in values] for i in range(n)]


def check_sert_command(argv: list[str], cwd: Path) -> None:
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from sert.cli import CONF_DIR, check_config

    if any(a in ("-h", "--help", "--hydra-help") for a in argv):
        return
    for job in expand_sweeps(overrides_of(argv)):
        try:
            with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
                cfg = compose(config_name="config", overrides=job)
            check_config(cfg)
            OmegaConf.to_container(cfg, resolve=True)
            instantiate(cfg.stage, _convert_="all")
        except Exception as e:  # noqa: BLE001 - name the command in the failure
            raise AssertionError(f"`sert {shlex.join(job)}` does not compose: {type(e).__name__}: {e}") from e


def check_report_command(argv: list[str]) -> None:
    from sert.report.cli import parser

    try:
        parser().parse_args(argv)
    except SystemExit as e:
        if e.code:
            raise AssertionError(f"`sert-report {shlex.join(argv)}`: bad options") from e


def compose_block(block: Block, tmp: Path) -> int:
    proc, record = run_block(block, tmp, "compose", timeout=120)
    assert proc.returncode == 0, f"{block.id} (compose) failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    cmds = recorded(record)
    cwd = ROOT
    for argv in cmds:
        if argv[0] == "sert":
            old = os.getcwd()
            os.chdir(cwd)
            try:
                check_sert_command(argv[1:], cwd)
            finally:
                os.chdir(old)
        else:
            check_report_command(argv[1:])
    return len(cmds)


def executed(mode: str) -> list[Block]:
    return [b for b in shell_blocks() if b.mode == mode]


@pytest.mark.parametrize("block", executed("compose") + executed("slow"), ids=lambda b: b.id)
def test_doc_block_composes(block: Block, tmp_path: Path):
    assert compose_block(block, tmp_path) > 0, f"{block.id}: a compose block without any sert/sert-report command"


@pytest.mark.parametrize("block", executed("run"), ids=lambda b: b.id)
def test_doc_block_runs(block: Block, tmp_path: Path):
    proc, _ = run_block(block, tmp_path, "run", timeout=900)
    assert proc.returncode == 0, f"{block.id} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}"


@pytest.mark.slow
@pytest.mark.parametrize("block", executed("slow"), ids=lambda b: b.id)
def test_doc_block_runs_slow(block: Block, tmp_path: Path):
    proc, _ = run_block(block, tmp_path, "run", timeout=3600)
    assert proc.returncode == 0, f"{block.id} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}"


def test_recorder_and_sweep_expansion(tmp_path: Path):
    """The machinery itself: a compose block records quoted arguments and expands a sweep."""
    block = Block(ROOT / "README.md", 0, "bash", 'X="a b"\nsert -m stage=finetune,sert "prompts.generate=$X {question}"\n'
                  "sert-report outputs/x --no-plots\n", "compose", "")
    _, record = run_block(block, tmp_path, "compose", timeout=60)
    assert recorded(record) == [["sert", "-m", "stage=finetune,sert", "prompts.generate=a b {question}"],
                                ["sert-report", "outputs/x", "--no-plots"]]
    assert expand_sweeps(["stage=finetune,sert", "model=tiny", "dataset.limit=1,2,3"]) == [
        ["stage=finetune", "model=tiny", "dataset.limit=1"], ["stage=sert", "model=tiny", "dataset.limit=2"],
        ["stage=finetune", "model=tiny", "dataset.limit=3"]]
    with pytest.raises(AssertionError, match="does not compose"):
        check_sert_command(["model.nme=x"], ROOT)
