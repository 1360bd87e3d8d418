"""Keep secrets out of everything a run writes: manifests, logs, W&B configs.

A key is secret by its *name*, matched word by word, never by substring: ``api_key``, ``openai_api_key``,
``secret``, ``client_secret``, ``password``, ``authorization``, ``token`` and ``hf_token``-style names
(``<owner>_token``) are secret; ``max_new_tokens``, ``samples_per_token``, ``min_tokens`` or ``pad_token``
are hyperparameters and stay visible. Keys ending in ``_env`` only *name* an environment variable
(``api_key_env``) and are kept. A value is secret by its *shape* whatever its key: ``Bearer ...``, an
OpenAI-style ``sk-...`` key, a Hugging Face ``hf_...`` token, a URL with a password (``https://u:p@host``).
"""

from __future__ import annotations

import re
from typing import Any

REDACTED = "***"

# last word of a key that makes it secret on its own (``password``, ``client_secret``, ``Authorization``)
_SECRET_WORDS = {"password", "passwd", "passphrase", "secret", "secrets", "authorization", "credentials",
                 "apikey", "cookie"}
# ``<word>_key`` is secret for these words (``api_key``, ``secret_key``, ``aws_secret_access_key``)
_KEY_OWNERS = {"api", "secret", "private", "access", "signing", "encryption"}
# ``token`` alone or ``<word>_token`` for these words (``hf_token``, ``access_token``, ``HUGGING_FACE_HUB_TOKEN``);
# ``samples_per_token``, ``first_token``, ``pad_token`` are not secrets
_TOKEN_OWNERS = {"hf", "hub", "api", "auth", "access", "bearer", "refresh", "session", "id", "oauth", "github", "gh",
                 "wandb", "openai", "secret", "private", "client", "personal", "service", "bot", "jwt", "csrf"}

SECRET_VALUE = re.compile(  # long random runs: 'sk-learn-runs', 'hf_cache' or 'the bearer of' are no secrets
    r"\b[Bb]earer\s+[A-Za-z0-9._~+/-]{16,}"  # an Authorization header value
    r"|\bsk-[A-Za-z0-9_-]*?[A-Za-z0-9_]{20}"  # OpenAI-style API key (sk-..., sk-proj-...)
    r"|\bhf_[A-Za-z0-9]{20,}"                # Hugging Face access token
    r"|://[^/@\s:]+:[^/@\s]+@"               # credentials inside a URL
)


def key_words(key: Any) -> list[str]:
    """Lower-case words of a key's last path component: ``teacher.apiKey`` -> ``["api", "key"]``."""
    leaf = re.split(r"[./]", str(key))[-1]
    leaf = re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", leaf)
    return [w for w in re.split(r"[^a-z0-9]+", leaf.lower()) if w]


def is_secret_key(key: Any) -> bool:
    """Does this config key (or its last dotted component) hold a secret? Whole words only."""
    words = key_words(key)
    if not words or words[-1] == "env":  # ``api_key_env``: the NAME of an environment variable
        return False
    last, prev = words[-1], (words[-2] if len(words) > 1 else "")
    if last in _SECRET_WORDS:
        return True
    if last == "key":
        return prev in _KEY_OWNERS
    if last == "token":
        return prev == "" or prev in _TOKEN_OWNERS
    return False


def is_secret_value(value: Any) -> bool:
    return isinstance(value, str) and SECRET_VALUE.search(value) is not None


def redact(obj: Any) -> Any:
    """Copy of a JSON-like tree with secret keys' values and secret-looking strings replaced by ``***``."""
    if isinstance(obj, dict):
        return {k: (REDACTED if is_secret_key(k) and v is not None else redact(v)) for k, v in obj.items()}
    if isinstance(obj, list):
        return [redact(v) for v in obj]
    return REDACTED if is_secret_value(obj) else obj


def override_key(arg: str) -> str:
    """The config key of a Hydra override: ``+teacher.api_key@pkg=v`` -> ``teacher.api_key``."""
    return arg.partition("=")[0].lstrip("+~").partition("@")[0]


def is_secret_arg(arg: str) -> bool:
    """A command-line argument that carries a secret (by its key or by its value's shape)."""
    key, sep, value = arg.partition("=")
    return bool(sep and is_secret_key(override_key(arg))) or is_secret_value(value if sep else key)


def redact_argv(argv: list[str]) -> list[str]:
    """Command-line arguments with secrets hidden: ``teacher.api_key=sk-..`` -> ``teacher.api_key=***``."""
    out = []
    for arg in argv:
        key, sep, _ = arg.partition("=")
        out.append((f"{key}={REDACTED}" if sep else REDACTED) if is_secret_arg(arg) else arg)
    return out
