"""Keep secrets out of everything a run writes: manifests, logs, W&B configs."""

from __future__ import annotations

import re
from typing import Any

SECRET_KEY = re.compile(r"(api[_-]?key|token|secret|password|authorization)", re.I)
REDACTED = "***"


def redact(obj: Any) -> Any:
    """Copy of a JSON-like tree with the values of secret-looking keys replaced by ``***``.

    Keys that only *name* an environment variable (``api_key_env``) are kept: they hold no secret."""
    if isinstance(obj, dict):
        return {
            k: (REDACTED if SECRET_KEY.search(str(k)) and not str(k).endswith("_env") and v is not None else redact(v))
            for k, v in obj.items()
        }
    if isinstance(obj, list):
        return [redact(v) for v in obj]
    return obj


def redact_argv(argv: list[str]) -> list[str]:
    """Command-line overrides with secret-looking values hidden: ``teacher.api_key=sk-..`` -> ``teacher.api_key=***``."""
    out = []
    for arg in argv:
        key, sep, _ = arg.partition("=")
        leaf = key.lstrip("+~").rsplit(".", 1)[-1]
        out.append(f"{key}={REDACTED}" if sep and SECRET_KEY.search(leaf) and not leaf.endswith("_env") else arg)
    return out
