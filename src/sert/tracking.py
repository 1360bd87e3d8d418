"""Experiment trackers (the ``logger`` config group). A logger hears about each finished step.

``logger=wandb`` (``WandbLogger``) makes one W&B run per job: name ``<stage>/<model>/<dataset>`` (plus any
other group swept in a multirun, e.g. ``/filter=pattern``), group = ``experiment_name`` (``<name>_<profile>``
under a profile: ``experiment=table2 profile=cpu`` -> ``table2_cpu``) or the multirun's sweep directory (a sweep
is one group), tags ``model:…``, ``dataset:…``, ``stage:…``, ``filter:…``, and the
resolved config with secrets redacted, plus top-level scalar columns to group the runs table by
(``config_columns``: method, model_name, dataset_name, seed, filter_preset, filters, trainer_name and the
resolved dtype_generate, dtype_train, dtype_evaluate). Per step it logs the summary metrics as
``<step>/<name>`` scalars (``eval/acc``, ``filter/pattern/kept``, ``filter/kept_after_rep2``, ``generate/tokens_per_s``,
``judge/overall``) into both history and ``run.summary`` (so the runs table compares them side by side),
the filter funnel, predictions and selected paths as ``wandb.Table``s, judge bin distributions as
tables and histograms, and ``run.json`` as a ``manifest`` artifact at the end.

A job that fails (an exception, Ctrl-C, SIGTERM) ends its run with exit code 1, the tag ``status:failed`` and
``status``, ``error/type``, ``error/step``, ``error/message`` in the summary (as in run.json). A job run again in
the same directory (a killed or failed job started again) continues the W&B run of that directory
(``resume="allow"`` with the id found under ``<run_dir>/wandb``), so it stays one run, finished once it succeeds.

Training loss curves: ``trainer.report_to: ${logger.report_to}`` makes the HF Trainer's WandbCallback
log into the run this logger started (it reuses an active ``wandb.run``).

W&B trouble never stops an experiment: every W&B call is guarded; on the first failure the logger warns
once, disables itself (and sets ``WANDB_MODE=disabled`` for the rest of the job so the Trainer's callback
does not retry), and the run goes on with run.json and artifacts on disk as usual.
"""

from __future__ import annotations

import logging
import math
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sert.pipeline import Context, StepOutput

log = logging.getLogger(__name__)

# step name -> metric prefix (the paper's and the dashboard's word for it)
PREFIX = {"evaluate": "eval"}
MAIN_GROUPS = ("stage", "model", "dataset")
NOT_IN_NAME = {"logger", "experiment", "profile", "hydra"}  # the group says them


class NullLogger:
    """``logger=none``: everything stays in run.json and the artifacts on disk."""

    def __init__(self, **_: Any):  # the logger schema's W&B knobs are accepted and ignored
        pass

    def start(self, ctx: Context) -> None:
        pass

    def log_step(self, out: StepOutput) -> None:
        pass

    def finish(self) -> None:
        pass


# ----------------------------------------------------------------------------- naming
def resolve_mode(mode: str, env: dict | None = None) -> str:
    """``auto`` -> ``$WANDB_MODE`` if set, else ``online`` with ``$WANDB_API_KEY``, else ``offline``."""
    env = os.environ if env is None else env
    if mode != "auto":
        return mode
    if env.get("WANDB_MODE"):
        return "offline" if env["WANDB_MODE"] == "dryrun" else env["WANDB_MODE"]
    return "online" if env.get("WANDB_API_KEY") else "offline"


def run_name(choices: dict, overrides: list[str], fallback: dict) -> str:
    """``<stage>/<model>/<dataset>`` plus ``/<group>=<option>`` for other groups chosen on the command line."""
    parts = [str(choices.get(g) or fallback.get(g) or "?") for g in MAIN_GROUPS]
    for o in overrides:
        key, _, value = o.lstrip("+~").partition("=")
        if key in choices and key not in MAIN_GROUPS and key not in NOT_IN_NAME:
            parts.append(f"{key}={value}")
    return "/".join(parts)


def run_group(experiment_name: str | None, choices: dict, sweep: str | None) -> str | None:
    """``experiment_name`` (suffixed ``_<profile>`` when a profile is applied), else the sweep dir name."""
    if not experiment_name:
        return sweep
    return f"{experiment_name}_{choices['profile']}" if choices.get("profile") else experiment_name


def run_tags(choices: dict, fallback: dict, extra: list[str]) -> list[str]:
    tags = [f"{g}:{choices.get(g) or fallback.get(g)}" for g in (*MAIN_GROUPS, "filter") if choices.get(g) or fallback.get(g)]
    return [t[:64] for t in [*tags, *extra]]


def hydra_job() -> tuple[list[str], str | None]:
    """(this job's command-line overrides, the sweep dir name when in a multirun)."""
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        hc = HydraConfig.get()
        sweep = None
        if hc.mode == RunMode.MULTIRUN:
            d = Path(hc.sweep.dir)
            sweep = f"{d.parent.name}/{d.name}" if d.parent.name else d.name
        return list(hc.overrides.task), sweep
    except Exception:
        return [], None


def config_columns(cfg: Any, ch: dict) -> dict[str, Any]:
    """Top-level scalar config keys to group and filter the W&B runs table by, beside the nested config:
    the method (stage), model, dataset, seed, filter chain, trainer, and the compute dtype of generation,
    training and evaluation as resolved on this machine (``auto`` -> bfloat16 or float32)."""
    cols = {"method": str(cfg.stage.name), "model_name": str(cfg.model.name), "dataset_name": str(cfg.dataset.name),
            "seed": cfg.seed, "filter_preset": ch.get("filter"),
            "filters": " > ".join(str(f) for f in cfg.filter.order) or "none",
            "trainer_name": ch.get("trainer") or cfg.trainer.get("name")}
    try:
        from omegaconf import OmegaConf

        from sert.hardware import canonical_dtype, resolve_dtype
        from sert.models import resolve_device
        from sert.training.base import resolve_precision

        device = resolve_device(cfg.device)
        knob = lambda node: OmegaConf.to_container(node, enum_to_str=True)  # noqa: E731
        cols["dtype_generate"] = resolve_dtype(knob(cfg.generation)["dtype"], device)
        cols["dtype_train"] = canonical_dtype(resolve_precision(knob(cfg.trainer)["precision"], device))
        cols["dtype_evaluate"] = resolve_dtype(knob(cfg.evaluate)["dtype"], device)
    except Exception as e:  # noqa: BLE001 - a bad dtype fails the step that uses it, with its own message
        log.debug("config columns: dtype not resolved (%s)", e)
    return cols


def job_run_id(run_dir: Path) -> str:
    """The W&B run id of the job in ``run_dir``: the id of a run it already made (``wandb/[offline-]run-<time>-<id>``:
    the job is being run again after a kill or a failure), else a new one."""
    import uuid

    earlier = sorted((run_dir / "wandb").glob("*run-*-*"), key=lambda p: p.stat().st_mtime)
    return earlier[-1].name.rsplit("-", 1)[-1] if earlier else uuid.uuid4().hex[:12]


def step_metrics(out: StepOutput) -> dict[str, float]:
    """The step's scalar metrics as ``<step>/<name>`` (names already containing ``/`` are kept)."""
    prefix = PREFIX.get(out.step, out.step)
    metrics = dict(out.summary.get("metrics") or {})
    scalars: dict[str, float] = {}
    for k, v in metrics.items():
        if isinstance(v, bool) or not isinstance(v, (int, float)) or (isinstance(v, float) and math.isnan(v)):
            continue
        scalars[k if "/" in k else f"{prefix}/{k}"] = v
    for k, v in out.summary.items():  # top-level counts (records, candidates, selected, n ...)
        if k not in ("metrics", "seconds") and isinstance(v, (int, float)) and not isinstance(v, bool):
            scalars.setdefault(f"{prefix}/{k}", v)
    seconds = out.summary.get("seconds")
    tokens = metrics.get("generate/tokens")
    if out.step == "generate" and tokens and seconds and not out.cached and "generate/tokens_per_s" not in scalars:
        scalars["generate/tokens_per_s"] = round(tokens / seconds, 2)
    for f in (out.summary.get("funnel") or {}).get("funnel", []):  # filter: survivors after each filter
        scalars[f"filter/kept_after_{f['filter']}"] = f["kept"]
    scalars[f"{prefix}/cached"] = int(out.cached)
    if seconds is not None:
        scalars[f"{prefix}/seconds"] = seconds
    return scalars


# ----------------------------------------------------------------------------- W&B
class WandbLogger:
    """``logger=wandb``: one W&B run per job (see the module docstring)."""

    def __init__(self, project: str = "sert", entity: str | None = None, mode: str = "auto",
                 tags: list[str] | None = None, notes: str | None = None, max_table_rows: int = 200,
                 log_tables: bool = True, log_manifest: bool = True, console: str = "off",
                 init_timeout: float = 60.0, report_to: str = "wandb"):
        self.project, self.entity, self.mode, self.notes = project, entity, mode, notes
        self.tags = list(tags or [])
        self.max_table_rows, self.log_tables, self.log_manifest = max_table_rows, log_tables, log_manifest
        self.console, self.init_timeout, self.report_to = console, init_timeout, report_to
        self.run: Any = None
        self.ctx: Context | None = None
        self.columns: dict[str, Any] = {}  # config_columns of this job
        self.roots: list[tuple[str, str]] = []  # sert.portable roots of this job
        self._env_before: dict[str, str | None] = {}

    # -- lifecycle ---------------------------------------------------------------
    def start(self, ctx: Context) -> None:
        from omegaconf import OmegaConf

        from sert.pipeline import choices
        from sert.portable import machine_roots, portable
        from sert.redaction import redact

        self.ctx = ctx
        mode = resolve_mode(self.mode)
        if mode == "disabled":
            log.info("W&B logging disabled (logger.mode=%s, WANDB_MODE=%s)", self.mode, os.environ.get("WANDB_MODE"))
            return
        cfg = ctx.cfg
        ch, (overrides, sweep) = choices(), hydra_job()
        fallback = {"stage": cfg.stage.name, "model": cfg.model.name, "dataset": cfg.dataset.name}
        name = run_name(ch, overrides, fallback)
        group = run_group(cfg.get("experiment_name"), ch, sweep)
        argv = sys.argv
        try:
            import wandb

            from sert.redaction import redact_argv

            sys.argv = redact_argv(argv)  # W&B records the command line in the run's metadata
            self.columns = config_columns(cfg, ch)
            self.roots = machine_roots(OmegaConf.to_container(cfg.paths, resolve=True, enum_to_str=True))
            config = portable({**redact(OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)), **self.columns},
                              self.roots)
            self.run = wandb.init(
                project=self.project, entity=self.entity, mode=mode, name=name, group=group,
                job_type=str(cfg.stage.name), tags=run_tags(ch, fallback, self.tags), notes=self.notes,
                config=config, dir=str(ctx.run_dir), reinit="finish_previous",
                id=job_run_id(ctx.run_dir), resume="allow",
                settings=wandb.Settings(console=self.console, init_timeout=self.init_timeout),
            )
            ctx.manifest.wandb = {"project": self.project, "entity": self.entity, "group": group, "id": self.run.id}
            log.info("W&B run %s (%s, group %s, mode %s) in %s", name, self.run.id, group, mode, ctx.run_dir / "wandb")
        except Exception as e:  # noqa: BLE001 - any W&B failure must leave the experiment running
            self._give_up("wandb.init", e)
        finally:
            sys.argv = argv

    def log_step(self, out: StepOutput) -> None:
        if self.run is None:
            return
        try:
            scalars = step_metrics(out)
            self.run.log(scalars)
            self.run.summary.update(scalars)
            if self.log_tables:
                for key, value in self._step_media(out).items():
                    self.run.log({key: value})
        except Exception as e:  # noqa: BLE001
            self._give_up(f"logging step {out.step}", e)

    def finish(self) -> None:
        failed = sys.exc_info()[0] is not None  # called from cli.run's finally: did the run crash?
        try:
            if self.run is not None:
                self._log_status(failed)
                if self.log_manifest and self.ctx is not None:
                    self._log_manifest()
                self.run.finish(exit_code=1 if failed else 0)
        except Exception as e:  # noqa: BLE001
            self._give_up("wandb.finish", e)
            self._force_finish()
        finally:
            self.run = None
            self._restore_env()

    # -- content -----------------------------------------------------------------
    def _log_status(self, failed: bool) -> None:
        """``status`` (ok | failed) in the summary; a failed job also gets the ``status:failed`` tag and its
        error (type, step, message: what run.json says). The config columns are set again: the HF Trainer's
        callback writes its own ``seed`` ... into the same config during training."""
        if self.columns:
            self.run.config.update(self.columns, allow_val_change=True)
        tags = [t for t in self.run.tags if t != "status:failed"]  # a resumed job may have failed before
        self.run.summary["status"] = "failed" if failed else "ok"
        if not failed:  # a resumed run keeps the summary of its failed attempt: drop that error
            for key in [k for k in self.run.summary.keys() if k.startswith("error/")]:
                del self.run.summary[key]
        else:
            tags.append("status:failed")
            error = (self.ctx.manifest.error if self.ctx is not None else None) or {}
            message = str(error.get("message") or "")
            self.run.summary.update({"error/type": error.get("type") or "?", "error/step": error.get("step") or "",
                                     "error/message": message[:2000]})
        if tuple(tags) != tuple(self.run.tags):
            self.run.tags = tuple(tags)

    def _step_media(self, out: StepOutput) -> dict[str, Any]:
        import wandb

        media: dict[str, Any] = {}
        prefix = PREFIX.get(out.step, out.step)
        stats = out.path("filter_stats.json")
        if stats.is_file():
            from sert.artifacts import read_json

            funnel = read_json(stats).get("funnel", [])
            cols = ["filter", "in", "kept", "dropped", "questions_with_path"]
            media["filter/funnel_table"] = wandb.Table(columns=cols, data=[[f.get(c) for c in cols] for f in funnel])
        for name in ("predictions.jsonl", "selected.jsonl"):
            if out.path(name).is_file():
                media[f"{prefix}/{name.split('.')[0]}_table"] = self._table(out.path(name))  # not the count
        judge = out.path("judge_metrics.json")
        if judge.is_file():
            media.update(self._judge_media(judge, out.path("judge.jsonl")))
        return media

    def _table(self, path: Path) -> Any:
        """First ``max_table_rows`` rows of a JSONL file; nested values as JSON text."""
        import json

        import wandb

        rows = []
        with open(path, encoding="utf-8") as f:
            for line in f:
                if len(rows) >= self.max_table_rows:
                    break
                if line.strip():
                    rows.append(json.loads(line))
        cols = list(dict.fromkeys(k for r in rows for k in r))
        cell = lambda v: v if isinstance(v, (str, int, float, bool)) or v is None else json.dumps(v)  # noqa: E731
        return wandb.Table(columns=cols, data=[[cell(r.get(c)) for c in cols] for r in rows])

    def _judge_media(self, metrics_path: Path, rows_path: Path) -> dict[str, Any]:
        import wandb

        from sert.artifacts import read_json, read_jsonl

        m = read_json(metrics_path)
        bins, dist = m.get("bins", []), m.get("distribution", {})
        data = [[crit, b, share] for crit, shares in dist.items() for b, share in zip(bins, shares)]
        media: dict[str, Any] = {"judge/bins_table": wandb.Table(columns=["criterion", "bin", "share"], data=data)}
        if rows_path.is_file():
            scores = [r["overall"] for r in read_jsonl(rows_path) if r.get("overall") is not None]
            if scores:
                import numpy as np

                media["judge/overall_hist"] = wandb.Histogram(np_histogram=np.histogram(scores, bins=[0, 2, 4, 6, 8, 10]))
        return media

    def _log_manifest(self) -> None:
        import wandb

        assert self.ctx is not None
        from sert.portable import portable

        path = self.ctx.manifest.write()
        copy = path.parent / "wandb" / "run.portable.json"  # the manifest with its machine paths made portable
        copy.write_text(portable(path.read_text(encoding="utf-8"), self.roots), encoding="utf-8")
        art = wandb.Artifact(f"manifest-{self.run.id}", type="manifest",
                             metadata={"stage": str(self.ctx.cfg.stage.name),
                                       "run_dir": portable(str(self.ctx.run_dir), self.roots)})
        art.add_file(str(copy), name="run.json")
        self.run.log_artifact(art)

    # -- failure handling --------------------------------------------------------
    def _give_up(self, what: str, err: Exception) -> None:
        log.warning("W&B logging failed at %s (%s: %s) — W&B is off for the rest of this run; the experiment "
                    "goes on and everything is still in run.json and the run directory.", what, type(err).__name__, err)
        self._force_finish()
        self.run = None
        self._set_env("WANDB_MODE", "disabled")  # the Trainer's WandbCallback must not try again

    def _force_finish(self) -> None:
        try:
            import wandb

            if wandb.run is not None:
                wandb.run.finish(exit_code=1)
        except Exception:  # noqa: BLE001
            pass

    def _set_env(self, key: str, value: str) -> None:
        self._env_before.setdefault(key, os.environ.get(key))
        os.environ[key] = value

    def _restore_env(self) -> None:
        for key, value in self._env_before.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        self._env_before.clear()
