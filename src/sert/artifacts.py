"""Artifacts on disk: atomic writes, JSONL, config hashing and the content-addressed stage cache.

A cache entry is a directory ``<cache_dir>/<step>/<key>/``. A step writes its files there (atomically,
one by one) and the entry becomes valid only when ``COMPLETE.json`` appears, written last. A killed
step leaves an entry without that marker: the next run re-enters the same directory and may resume from
what is there (training checkpoints, teacher responses), but never trusts it as a finished result.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import secrets
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

COMPLETE = "COMPLETE.json"


# ----------------------------------------------------------------------------- atomic files
@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temp path beside ``path``; on success rename it over ``path`` (atomic on POSIX)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # not mkstemp: its files are 0600, which makes a shared cache unreadable to the group/others.
    # O_EXCL + mode 0666 lets the umask decide (0644 under umask 022), like any other file the run writes.
    while True:
        tmp = str(path.parent / f".{path.name}.{secrets.token_hex(6)}.tmp")
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            break
        except FileExistsError:  # pragma: no cover - 48 random bits collided
            continue
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_text(path: str | os.PathLike, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    return write_text(path, json.dumps(obj, indent=2, ensure_ascii=False, default=str) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    """Read a JSON file; invalid JSON raises ``ValueError`` naming the file, line and column."""
    text = Path(path).read_text(encoding="utf-8")
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(json_error(path, e)) from None


def json_error(path: str | os.PathLike, e: json.JSONDecodeError) -> str:
    """``file:line:column: not valid JSON (reason)``; a file cut short says so."""
    at_end = e.pos >= len(e.doc.rstrip()) or e.msg.startswith("Unterminated string")  # ran off the end
    cut = " — the file looks truncated" if at_end else ""
    return f"{path}:{e.lineno}:{e.colno}: not valid JSON ({e.msg}){cut}"


def write_jsonl(path: str | os.PathLike, rows: Iterable[dict]) -> Path:
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False, default=str) + "\n")
    return Path(path)


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """Read a JSONL file; a malformed line raises ``ValueError`` naming the file and line."""
    rows = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{lineno}: not valid JSON ({e.msg})") from None
    return rows


def append_jsonl(path: str | os.PathLike, row: dict) -> None:
    """Append one row and fsync: used for incremental logs that a killed run resumes from.

    Readers must tolerate a torn last line (see ``read_jsonl_tolerant``)."""
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(row, ensure_ascii=False, default=str) + "\n")
        f.flush()
        os.fsync(f.fileno())


def read_jsonl_tolerant(path: str | os.PathLike) -> list[dict]:
    """Read an append-only log, skipping a torn (half-written) line left by a kill."""
    if not os.path.exists(path):
        return []
    rows = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            with contextlib.suppress(json.JSONDecodeError):
                rows.append(json.loads(line))
    return rows


# ----------------------------------------------------------------------------- hashing
def stable_hash(obj: Any, length: int = 16) -> str:
    """Hash of a JSON-able object, independent of dict key order."""
    blob = json.dumps(obj, sort_keys=True, ensure_ascii=False, default=str, separators=(",", ":"))
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:length]


def file_hash(path: str | os.PathLike, length: int = 16) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:length]


# ----------------------------------------------------------------------------- cache store
class CacheEntry:
    """One ``<step>/<key>`` directory of the store."""

    def __init__(self, root: Path, step: str, key: str):
        self.step, self.key = step, key
        self.dir = root / step / key

    @property
    def complete(self) -> bool:
        return (self.dir / COMPLETE).exists()

    def partial_files(self) -> list[Path]:
        """Files an interrupted build left in the entry (hidden temp files of half-done writes excluded)."""
        if not self.dir.is_dir():
            return []
        return [p for p in self.dir.rglob("*") if p.is_file() and not p.name.startswith(".")]

    def record(self) -> dict:
        return read_json(self.dir / COMPLETE)

    def finish(self, summary: dict, material: Any) -> dict:
        files = sorted(
            str(p.relative_to(self.dir))
            for p in self.dir.rglob("*")
            if p.is_file() and p.name != COMPLETE and not p.name.startswith(".")
        )
        record = {"step": self.step, "key": self.key, "files": files, "summary": summary, "material": material}
        write_json(self.dir / COMPLETE, record)
        return record

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Exclusive inter-process lock: two jobs needing the same entry never build it twice at once.

        In a job of several processes only rank 0 builds under the lock; the other ranks take it
        afterwards to wait for rank 0's result (``sert.pipeline.Context.cached``)."""
        self.dir.parent.mkdir(parents=True, exist_ok=True)
        with open(self.dir.parent / f".{self.key}.lock", "w") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)


class ArtifactStore:
    def __init__(self, root: str | os.PathLike):
        self.root = Path(root).resolve()

    def entry(self, step: str, key: str) -> CacheEntry:
        return CacheEntry(self.root, step, key)
