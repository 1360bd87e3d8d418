"""Stages and steps: how a run executes, caches and records its work.

A *stage* (``conf/stage/*.yaml``) is an ordered list of *steps*. A step is a function
``run(ctx) -> StepOutput`` in its own module (``STEPS`` below). Steps pull what they need with
``ctx.require("other_step")``, which runs that step once per run (memoised), so ``stage=sert`` can
list just ``[self_train, evaluate]`` and generation/filtering happen on demand.

Expensive steps go through ``ctx.cached(step, material, inputs, build)``: the cache key hashes exactly
the config that determines the result (``material``) plus the keys of the step's inputs, so a change
of an irrelevant knob reuses the artifact and a relevant one rebuilds it.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from sert import distributed, faults, hardware
from sert.artifacts import ArtifactStore, stable_hash, write_json, write_jsonl
from sert.config.data import DatasetConfig, ModelConfig, OnError
from sert.data import Record, load_records
from sert.prompts import Prompts

log = logging.getLogger(__name__)

# step name -> module whose ``run(ctx)`` executes it (imported lazily: `sert --help` stays fast).
STEPS: dict[str, str] = {
    "data": "sert.pipeline",
    "generate": "sert.generate",
    "filter": "sert.filters",
    "teacher": "sert.teacher",
    "judge": "sert.judge",
    "self_train": "sert.training.steps.self_train",
    "distill": "sert.training.steps.distill",
    "finetune": "sert.training.steps.finetune",
    "evaluate": "sert.evaluate",
}


@dataclass
class StepOutput:
    step: str
    key: str
    dir: Path
    summary: dict = field(default_factory=dict)
    cached: bool = False
    seconds: float = 0.0

    def path(self, name: str) -> Path:
        return self.dir / name


@dataclass
class Dataset:
    records: list[Record]
    key: str  # content hash of the records
    split: str


class Context:
    """What a step sees: the resolved config, the run directory, the cache and earlier steps' outputs."""

    def __init__(self, cfg: DictConfig, run_dir: Path):
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.store = ArtifactStore(cfg.paths.cache_dir)
        self.outputs: dict[str, StepOutput] = {}
        self.manifest = Manifest(self)
        self._datasets: dict[tuple, Dataset] = {}
        self._running: list[str] = []

    @property
    def prompts(self) -> Prompts:
        return OmegaConf.to_object(self.cfg.prompts)  # the schema node is a Prompts dataclass

    # -- steps -----------------------------------------------------------------
    def require(self, step: str) -> StepOutput:
        """Run ``step`` unless this run already has its output."""
        if step in self.outputs:
            return self.outputs[step]
        if step in self._running:
            raise RuntimeError(f"step dependency cycle: {' -> '.join([*self._running, step])}")
        if step not in STEPS:
            raise KeyError(f"unknown step {step!r}; known steps: {', '.join(sorted(STEPS))}")
        self._running.append(step)
        try:
            out = importlib.import_module(STEPS[step]).run(self)
        except BaseException as err:
            _mark_step(err, step)  # the innermost step wins: the one that was running
            raise
        finally:
            self._running.pop()
        self.outputs[step] = out
        self.manifest.add(out)
        return out

    def cached(self, step: str, material: Any, inputs: list[StepOutput | Dataset], build: Callable[[Path], dict],
               *, all_ranks: bool = False) -> StepOutput:
        """Return the cached artifact of ``step`` for this config, building it with ``build(dir)`` if needed.

        ``build`` writes its files into ``dir`` (atomically, file by file) and returns a JSON-able summary.
        A killed build leaves the directory without its completion marker; the next call re-enters it,
        so a build may resume from files it finds there.

        In a run of several processes (``sert.distributed``) rank 0 decides hit or build and writes the
        marker; ``build`` runs on rank 0 only, or on every rank with ``all_ranks`` (training: then only
        rank 0 may write files). The other ranks then wait for the entry's lock (no time limit) and read rank
        0's record; a barrier then lets rank 0 go on (it must not take the lock again before they read)."""
        key = stable_hash({"step": step, "material": material, "inputs": [i.key for i in inputs]})
        entry = self.store.entry(step, key)
        if not distributed.is_main():
            out = self._follow(step, entry, build if all_ranks else None)
        else:
            out = self._build_or_reuse(step, entry, material, build)
        distributed.barrier()
        return out

    def _build_or_reuse(self, step: str, entry, material: Any, build: Callable[[Path], dict]) -> StepOutput:
        """Rank 0 (or the only process): under the entry's lock, reuse it if complete, else build it."""
        key = entry.key
        with entry.lock():
            hit = entry.complete
            if hit:
                damage = entry.problem(OmegaConf.select(self.cfg, "paths.verify", default="fast"))
                if damage is not None:
                    log.warning("[%s] cache entry %s is damaged (%s): deleting it and building it again",
                                step, entry.dir, damage)
                    entry.discard()
                    hit = False
            if distributed.broadcast(hit):
                log.info("[%s] cache hit %s — reusing %s", step, key, entry.dir)
                return StepOutput(step, key, entry.dir, entry.record()["summary"], cached=True)
            left = entry.partial_files()  # an interrupted build's files (the build resumes from them)
            entry.dir.mkdir(parents=True, exist_ok=True)
            if left:
                log.info("[%s] resuming in %s (%d files from an interrupted run)", step, entry.dir, len(left))
            else:
                log.info("[%s] computing into %s", step, entry.dir)
            start = time.perf_counter()
            try:
                summary = build(entry.dir) or {}
            except OSError as err:  # e.g. a full disk: leave what is finished (the rerun resumes), free the rest
                entry.remove_temp_files()
                err.sert_path = str(entry.dir)  # type: ignore[attr-defined] - where, when the error does not say
                raise
            seconds = time.perf_counter() - start
            summary = {**summary, "seconds": round(seconds, 3)}
            entry.finish(summary, material)
        return StepOutput(step, key, entry.dir, summary, cached=False, seconds=seconds)

    def _follow(self, step: str, entry, build: Callable[[Path], dict] | None) -> StepOutput:
        """A rank other than 0: take rank 0's decision, build along if asked, then read its record."""
        hit = distributed.broadcast(None)
        start = time.perf_counter()
        if not hit and build is not None:
            entry.dir.mkdir(parents=True, exist_ok=True)
            build(entry.dir)
        with entry.lock():  # rank 0 holds it until the entry is complete (or its build failed)
            if not entry.complete:
                raise RuntimeError(f"[{step}] rank 0 did not complete {entry.dir} (see rank 0's log)")
            rec = entry.record()
        return StepOutput(step, entry.key, entry.dir, rec["summary"], cached=hit,
                          seconds=0.0 if hit else time.perf_counter() - start)

    # -- data ------------------------------------------------------------------
    def dataset(self, split: str | None = None, limit: int | None | str = "config") -> Dataset:
        """Records of ``split`` (default ``dataset.split``), first ``limit`` (default ``dataset.limit``)."""
        d: DatasetConfig = OmegaConf.to_object(self.cfg.dataset)
        split = split or d.split
        limit = d.limit if limit == "config" else limit
        if (split, limit) not in self._datasets:
            records, report = load_records(
                path=d.path, split=split, split_file=d.split_file, limit=limit, on_error=OnError(d.on_error).value,
                hub_id=d.hub_id, hub_config=d.hub_config, hub_splits=dict(d.hub_splits),
            )
            if not records:
                raise ValueError(f"dataset {d.name} split {split!r} has no usable records ({report.source})")
            key = stable_hash([r.to_json() for r in records])
            log.info("dataset %s/%s: %d records (%d malformed rows skipped) from %s",
                     d.name, split, len(records), len(report.skipped), report.source)
            self.manifest.data[split] = {"source": report.source, "records": len(records), "key": key,
                                         "skipped": len(report.skipped), "skipped_rows": report.skipped[:100]}
            self._datasets[(split, limit)] = Dataset(records, key, split)
        return self._datasets[(split, limit)]

    @property
    def model(self) -> ModelConfig:
        return OmegaConf.to_object(self.cfg.model)

    def model_kwargs(self) -> dict:
        """The base model's loading arguments as plain values (for ``sert.models.load_model``)."""
        return {**self.model.load_kwargs(), "device": self.cfg.device}

    def model_identity(self) -> dict:
        """What identifies the base model's weights in cache keys. A randomly initialised (tiny) model is
        its shape + seed + tokenizer: ``load_model`` ignores ``name_or_path`` then, so the key does too."""
        m = self.model.load_kwargs()
        keys = ("gguf_file", "tokenizer", "dtype", "random_init") if m.get("random_init") is not None else \
            ("name_or_path", "gguf_file", "tokenizer", "dtype", "random_init")
        return {k: m[k] for k in keys}


class Pipeline:
    """A stage: runs its steps in order (each pulling its own dependencies)."""

    def __init__(self, name: str, steps: list[str], extra_steps: list[str] = (), distill_init: str = "base",
                 evaluate_model: str = "base"):
        steps = [*steps, *(s for s in extra_steps if s not in steps)]  # e.g. a method stage + the judge
        unknown = [s for s in steps if s not in STEPS]
        if unknown:
            raise ValueError(f"stage {name!r}: unknown steps {unknown}; known: {', '.join(sorted(STEPS))}")
        self.name, self.steps = name, list(steps)
        self.distill_init = distill_init  # base | sert: read by the distill step (stage.distill_init)
        self.evaluate_model = evaluate_model  # read by the evaluate step (stage.evaluate_model)

    def __call__(self, ctx: Context) -> dict[str, StepOutput]:
        for step in self.steps:
            ctx.require(step)
        ctx.manifest.write()
        return ctx.outputs


class Manifest:
    """``run.json``: stage, resolved config, per-step cache keys, artifacts and timings, versions, git."""

    def __init__(self, ctx: Context):
        self.ctx = ctx
        self.steps: list[dict] = []
        self.data: dict[str, dict] = {}
        self.started = time.time()
        self.finished: float | None = None
        self.status = "running"  # running -> ok | failed; a killed job stays "running" with no finished time
        self.error: dict | None = None
        self.wandb: dict | None = None  # the W&B run of this job (project, entity, group, id), set by the logger
        self.listeners: list[Callable[[StepOutput], None]] = []  # e.g. the W&B logger

    RESERVE = ".run.json.reserve"  # space held for the final run.json (a full disk must not hide the error)
    RESERVE_BYTES = 256 << 10

    def reserve(self) -> None:
        """Hold a little disk space beside run.json, given back when the job ends."""
        with contextlib.suppress(OSError), open(self.ctx.run_dir / self.RESERVE, "wb") as f:
            f.write(bytes(self.RESERVE_BYTES))

    def finish(self, status: str, err: BaseException | None = None) -> Path:
        """Record the job's end: ``ok``, or ``failed`` with the error and the step that was running.

        On a full disk the reserved space is given back and the write retried; if run.json still cannot
        be written, a failed job says so in the log and its own error is what the caller raises."""
        self.status, self.finished = status, time.time()
        if err is not None:
            self.error = {"type": type(err).__name__, "message": str(err), "step": failed_step(err)}
        reserve = self.ctx.run_dir / self.RESERVE
        try:
            return self.write()
        except OSError:
            reserve.unlink(missing_ok=True)  # give the held space back and try once more
            try:
                return self.write()
            except OSError as again:
                if err is None:
                    raise
                log.error("could not record the failure in %s (%s)", self.ctx.run_dir / "run.json", again)
                return self.ctx.run_dir / "run.json"
        finally:
            reserve.unlink(missing_ok=True)

    def add(self, out: StepOutput) -> None:
        if not distributed.is_main():  # run.json, links and trackers are rank 0's
            return
        files = sorted(str(p.relative_to(out.dir)) for p in out.dir.rglob("*") if p.is_file() and not p.name.startswith("."))
        self.steps.append({"step": out.step, "key": out.key, "cached": out.cached, "dir": str(out.dir),
                           "files": files, "seconds": round(out.seconds, 3), "summary": out.summary})
        link = self.ctx.run_dir / out.step
        if out.dir.is_dir() and not link.exists():
            link.symlink_to(out.dir, target_is_directory=True)
        self.write()
        faults.reached("manifest.step_recorded")
        for listener in self.listeners:
            listener(out)

    def write(self) -> Path | None:
        from sert.redaction import redact, redact_argv

        if not distributed.is_main():
            return None
        cfg = self.ctx.cfg
        return write_json(self.ctx.run_dir / "run.json", {
            "stage": cfg.stage.name,
            "status": self.status,
            "error": self.error,
            **({"wandb": self.wandb} if self.wandb else {}),
            "overrides": redact_argv(overrides()),
            "started": _iso(self.started),
            "finished": _iso(self.finished),
            "choices": choices(),
            "config": redact(OmegaConf.to_container(cfg, resolve=True)),
            "data": self.data,
            "steps": self.steps,
            "wall_seconds": round((self.finished or time.time()) - self.started, 3),
            "hardware": hardware.describe(),
            "processes": distributed.world_size(),
            "versions": versions(),
            "git_commit": git_commit(),
            "command": redact_argv(sys.argv),
        })


# ----------------------------------------------------------------------------- the data step
def run(ctx: Context) -> StepOutput:
    """``stage=data``: load, validate and write the configured split as JSONL."""
    ds = ctx.dataset()

    def build(d: Path) -> dict:
        write_jsonl(d / f"{ds.split}.jsonl", (r.to_json() for r in ds.records))
        return {"split": ds.split, "records": len(ds.records), "skipped": ctx.manifest.data[ds.split]["skipped"]}

    out = ctx.cached("data", {"split": ds.split}, [ds], build)
    print(f"{ctx.cfg.dataset.name}/{ds.split}: {len(ds.records)} records -> {out.path(ds.split + '.jsonl')}")
    return out


# ----------------------------------------------------------------------------- helpers
def _mark_step(err: BaseException, step: str) -> None:
    if failed_step(err) is None:
        try:
            err.sert_step = step  # type: ignore[attr-defined]
        except AttributeError:  # pragma: no cover - exceptions without a __dict__
            pass


def failed_step(err: BaseException) -> str | None:
    """The step that was running when ``err`` was raised (None: outside any step)."""
    return getattr(err, "sert_step", None)


def _iso(t: float | None) -> str | None:
    from datetime import datetime

    return datetime.fromtimestamp(t).astimezone().isoformat(timespec="seconds") if t else None


def overrides() -> list[str]:
    """This job's Hydra task overrides (a sweep job: its own values plus the fixed ones)."""
    try:
        from hydra.core.hydra_config import HydraConfig

        return list(HydraConfig.get().overrides.task)
    except Exception:
        return []


def choices() -> dict:
    """Hydra's chosen group options for this job (e.g. {"model": "gpt2", "stage": "sert"})."""
    try:
        from hydra.core.hydra_config import HydraConfig

        return {k: v for k, v in HydraConfig.get().runtime.choices.items() if not k.startswith("hydra")}
    except Exception:
        return {}


def versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for pkg in ("sert", "torch", "transformers", "accelerate", "datasets", "hydra-core", "omegaconf", "wandb", "openai"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    return out


def git_commit() -> str | None:
    try:
        root = Path(__file__).resolve().parents[2]
        if not (root / "src" / "sert").is_dir():  # an installed wheel: no source checkout to ask
            return None
        return subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=5).stdout.strip() or None
    except Exception:
        return None
