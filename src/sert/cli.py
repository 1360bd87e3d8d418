"""The ``sert`` entrypoint: compose the config, instantiate the stage, run it, log it."""

from __future__ import annotations

import logging
import os
import re
import signal
import sys
import warnings
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import CompactHydraException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from sert import schema

log = logging.getLogger("sert")


# the config tree and the OmegaConf resolvers (sert.confdir), re-exported for callers of sert.cli
from sert.confdir import CONF_DIR, find_conf_dir, register_resolvers, short_dirname  # noqa: E402,F401

schema.register()


class RunError(CompactHydraException):
    """A user-facing failure of a run: Hydra prints only this one line (``HYDRA_FULL_ERROR=1`` gives the
    chained traceback); the job's log file always has the full traceback."""


def is_user_error(err: BaseException) -> bool:
    """Errors about the user's input or setup, whose message names the problem: shown as one line.
    Anything else (a bug) keeps its traceback on the console."""
    from sert.artifacts import is_disk_full

    if isinstance(err, (ValueError, FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError)):
        return True
    if is_disk_full(err):
        return True
    try:
        from sert.llm_client import FatalAPIError
    except Exception:  # pragma: no cover - optional dependency missing
        return False
    return isinstance(err, FatalAPIError)


def check_config(cfg: DictConfig) -> None:
    """Checks the schema cannot express, made before anything loads."""
    from sert.config.checks import check_values

    for key in ("dataset.limit", "evaluate.limit"):
        value = OmegaConf.select(cfg, key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ValueError(f"{key} must be a positive integer (the first N records) or null (all), got {value!r}")
    for key in ("trainer.batch_size", "evaluate.batch_size"):
        value = OmegaConf.select(cfg, key)
        if value is not None and value < 1:
            raise ValueError(f"{key} must be a positive integer, got {value}")
    check_filters(cfg.filter)
    check_values(cfg)


FILTER_SETTINGS = ("input", "order", "ppl_model")  # conf/filter/full.yaml: what is not a filter


def check_filters(f: DictConfig) -> None:
    """The ``filter`` group is open (a new filter is one class + one YAML): every key but the chain's own
    settings (FILTER_SETTINGS) must define a component with a ``_target_``, and ``order`` may name only those."""
    defined = {k for k in f if k not in FILTER_SETTINGS}
    stray = sorted(k for k in defined if not OmegaConf.is_dict(f[k]) or "_target_" not in f[k])
    if stray:
        raise ValueError(f"filter.{stray[0]} is not a filter (a node with a _target_ class and its arguments)")
    unknown = [n for n in f.order if n not in defined or n == "selector"]
    if unknown:
        raise ValueError(f"filter.order names {unknown}, which are not filters defined under filter.* "
                         f"(defined: {sorted(defined - {'selector'})})")


# Third-party messages a sert user cannot act on (sert picks the dtype and the cache API itself): dropped.
NOISE = (
    "Loading a GGUF checkpoint with its weights packed is fastest in float32",  # transformers, bf16 GGUF loads
    "`past_key_values`/`cache_params` are deprecated",  # transformers 5.2x: from HF generate (benchmarks), not sert
)


class _DropNoise(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        return not any(n in msg for n in NOISE)


def quiet_third_party() -> None:
    """Silence the warnings listed in ``NOISE`` (and torch's FutureWarning for the renamed cache argument);
    every other warning still shows."""
    warnings.filterwarnings("ignore", message=r"`past_key_values` is deprecated", category=FutureWarning)
    try:
        from transformers.utils import logging as hf_logging
    except Exception:  # pragma: no cover - transformers missing
        return
    root = hf_logging._get_library_root_logger()
    for target in (root, *root.handlers, *logging.getLogger().handlers):
        if not any(isinstance(f, _DropNoise) for f in target.filters):
            target.addFilter(_DropNoise())


def shown(path: Path | str) -> str:
    """``path`` relative to the working directory when it is below it (what a user would type), else absolute."""
    path = Path(path).resolve()
    try:
        return str(path.relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def announce(message: str) -> None:
    """A line for the user on stdout (and in the job's log file)."""
    print(message, flush=True)
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(log.makeRecord(log.name, logging.INFO, __file__, 0, message, (), None))


def run(cfg: DictConfig, run_dir: Path) -> dict:
    """Run the configured stage inside ``run_dir``; returns the run's final metrics (may be empty).

    ``run.json`` says ``status: running`` from the start (a killed job keeps it, with no ``finished``),
    then ``ok``, or ``failed`` with the error and the step that raised it."""
    from transformers import set_seed

    from sert import distributed
    from sert.models import resolve_device
    from sert.pipeline import Context

    quiet_third_party()
    distributed.setup(resolve_device(cfg.device))  # a run of several processes: join its group
    set_seed(cfg.seed)
    run_dir.mkdir(parents=True, exist_ok=True)
    ctx = Context(cfg, run_dir)
    ctx.manifest.write()
    logger = None
    try:
        ctx.manifest.reserve()
        check_config(cfg)
        log.info("Instantiating stage <%s> %s", cfg.stage._target_, list(cfg.stage.steps))
        pipeline = instantiate(cfg.stage, _convert_="all")
        logger = instantiate(cfg.logger, _convert_="all") if cfg.get("logger") and distributed.is_main() else None
        if logger is not None:
            logger.start(ctx)
            ctx.manifest.listeners.append(logger.log_step)
        outputs = pipeline(ctx)
        ctx.manifest.finish("ok")
    except BaseException as err:
        ctx.manifest.finish("failed", err)
        raise
    finally:
        if logger is not None:
            logger.finish()
    last = outputs[pipeline.steps[-1]]
    return dict(last.summary.get("metrics", {}))


def _log_to_files(message: str, err: BaseException) -> list[str]:
    """Write ``message`` + the full traceback to the job's log file(s) only (not the console)."""
    record = log.makeRecord(log.name, logging.ERROR, __file__, 0, message, (), (type(err), err, err.__traceback__))
    files = []
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)
            files.append(handler.baseFilename)
    return files


# this process's jobs (the basic launcher runs a sweep's jobs in-process, one after the other)
_jobs: dict = {"multirun": False, "failed": [], "sweep_dir": None, "ran": 0}


def _multirun() -> bool:
    from hydra.types import RunMode

    return HydraConfig.get().mode == RunMode.MULTIRUN


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="config")
def _hydra_main(cfg: DictConfig) -> float | None:
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    _jobs["multirun"] = _multirun()
    if _jobs["multirun"]:
        _jobs["sweep_dir"] = HydraConfig.get().sweep.dir
    _jobs["ran"] += 1
    announce(f"run directory: {shown(run_dir)}")
    try:
        metrics = run(cfg, run_dir)
    except Exception as err:
        from sert.artifacts import disk_full_message, is_disk_full
        from sert.pipeline import failed_step

        step = failed_step(err)
        what = disk_full_message(err, getattr(err, "sert_path", run_dir)) if is_disk_full(err) else \
            f"{type(err).__name__}: {err}"
        line = f"{f'[{step}] ' if step else ''}{what}"
        files = _log_to_files(f"job failed: {line}", err)
        where = f" (traceback in {files[0]})" if files else ""
        _jobs["failed"].append(f"{run_dir}: {line}")
        if _jobs["multirun"]:  # the sweep goes on: say now which job failed (Hydra reports the first at the end)
            log.error("job failed: %s%s", line, where)
        if is_user_error(err):
            raise RunError(line + where) from err
        raise
    announce(f"done: {shown(run_dir)} (run.json, the step outputs, cli.log)"
             + ("" if _jobs["multirun"] else f"\nnext: sert-report {shown(run_dir)}   # tables and figures of this run"))
    # Hydra sweepers optimise the returned value: the run's accuracy when it has one.
    return metrics.get("acc")


ENV_REFERENCE = re.compile(r"\$\{oc\.env:[A-Za-z_][A-Za-z0-9_]*\}")


def refuse_secret_overrides(argv: list[str]) -> None:
    """Stop before Hydra writes anything when an override carries a secret (``+teacher.api_key=sk-...``).

    Hydra copies every override into the run's ``.hydra/*.yaml`` and, in a sweep, into job directory
    names, logs and the W&B files; redacting all of those afterwards is fragile, so the key never gets
    in. Keys are read from environment variables (``teacher.api_key_env=VAR``); a secret-named key may be
    given as an environment reference (``+x.api_key=${oc.env:VAR}``), which Hydra stores unresolved."""
    from sert.redaction import is_secret_arg, is_secret_value, redact_argv

    for arg in argv:
        value = arg.partition("=")[2]
        if arg.startswith("-") or not is_secret_arg(arg):
            continue
        if ENV_REFERENCE.fullmatch(value) and not is_secret_value(value):
            continue
        raise SystemExit(
            f"sert: refusing the override {redact_argv([arg])[0]}: a secret on the command line would be written "
            "to the run's .hydra files, job names and logs; put it in an environment variable and pass its name "
            "(teacher.api_key_env=VAR, judge.api_key_env=VAR) or reference it as ${oc.env:VAR}. Nothing was run.")


class Terminated(KeyboardInterrupt):
    """SIGTERM (``kill``, a scheduler's time limit): handled like Ctrl-C, so run.json says ``failed``."""


def _terminate(signum, frame) -> None:
    raise Terminated("terminated (SIGTERM)")


def main() -> None:
    """``sert``: Hydra's entry point; a multirun with failed jobs lists them at the end (exit status 1).
    SIGTERM stops the run like Ctrl-C (run.json ``failed``), then the process ends by that signal."""
    refuse_secret_overrides(sys.argv[1:])
    logging.raiseExceptions = False  # a log file on a full disk must not print a traceback per record
    signal.signal(signal.SIGTERM, _terminate)
    terminated = False
    try:
        _hydra_main()
    except Terminated:
        terminated = True
        sys.stderr.write("sert: terminated (SIGTERM); the run is marked failed in its run.json\n")
    finally:
        failed = _jobs["failed"]
        if failed and _jobs["multirun"]:
            sys.stderr.write(f"{len(failed)} sweep job(s) failed (status \"failed\" in their run.json):\n"
                             + "".join(f"  {j}\n" for j in failed))
        if _jobs["multirun"] and _jobs["sweep_dir"]:
            print(f"sweep directory: {shown(_jobs['sweep_dir'])} ({_jobs['ran']} jobs)\n"
                  f"next: sert-report {shown(_jobs['sweep_dir'])}   # Table II, figures, report.md", flush=True)
    if terminated:  # end by the signal, as a process without the handler would (exit status 143 / -15)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTERM)


if __name__ == "__main__":
    main()
