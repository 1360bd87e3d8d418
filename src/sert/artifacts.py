"""Artifacts on disk: atomic writes, JSONL, config hashing and the content-addressed stage cache.

A cache entry is a directory ``<cache_dir>/<step>/<key>/``. A step writes its files there (atomically,
one by one) and the entry becomes valid only when ``COMPLETE.json`` appears, written last. A killed
step leaves an entry without that marker: the next run re-enters the same directory and may resume from
what is there (training checkpoints, teacher responses), but never trusts it as a finished result.

``COMPLETE.json`` also records every file's size and sha256 (computed once, when the entry is finished).
A cache hit checks them before serving the entry (``verify``: sizes of every file and hashes of the files
up to ``CHEAP_HASH_BYTES`` by default, every hash with ``paths.verify=full``); an entry that fails the check
is never served: the step deletes and rebuilds it.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import secrets
import shutil
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

COMPLETE = "COMPLETE.json"
# a cache hit hashes files up to this size (the model weights are checked by size; paths.verify=full: all)
CHEAP_HASH_BYTES = 64 << 20


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


def read_text(path: str | os.PathLike) -> str:
    """A UTF-8 text file's content; another encoding raises ``ValueError`` naming the file and byte."""
    try:
        return Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(not_utf8(path, e)) from None


def not_utf8(path: str | os.PathLike, e: UnicodeDecodeError) -> str:
    return f"{path}: not UTF-8 text (byte 0x{e.object[e.start]:02x} at offset {e.start}); save it as UTF-8"


def read_json(path: str | os.PathLike) -> Any:
    """Read a JSON file; invalid JSON or text raises ``ValueError`` naming the file, line and column."""
    text = read_text(path)
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
    for lineno, line in enumerate(read_text(path).split("\n"), 1):  # not splitlines(): U+2028 is JSON text
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
    with open(path, encoding="utf-8", errors="replace") as f:  # a kill may tear a multi-byte character too
        for line in f:
            with contextlib.suppress(json.JSONDecodeError):
                rows.append(json.loads(line))
    return rows


# ----------------------------------------------------------------------------- a full disk
DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


def is_disk_full(err: BaseException) -> bool:
    return isinstance(err, OSError) and err.errno in DISK_FULL


def disk_full_message(err: OSError, where: str | os.PathLike) -> str:
    """One line: what could not be written, how much space is left there, and that a rerun resumes."""
    path = Path(err.filename or where)
    probe = next((p for p in (path, *path.parents) if p.exists()), Path("/"))
    free = shutil.disk_usage(probe).free
    return (f"no space left on the device writing {path} ({human_size(free)} free there; {err.strerror}): free some "
            "space and run the same command again (finished steps are cached, an interrupted one resumes)")


def human_size(n: float) -> str:
    """``262144`` -> ``262.1 KB`` (decimal units, as ``df -H``)."""
    units = ["B", "KB", "MB", "GB", "TB"]
    i = 0
    while n >= 1000 and i < len(units) - 1:
        n, i = n / 1000, i + 1
    return f"{n:.0f} B" if i == 0 else f"{n:.1f} {units[i]}"


# ----------------------------------------------------------------------------- hashing
def stable_hash(obj: Any, length: int = 16) -> str:
    """Hash of a JSON-able object, independent of dict key order."""
    blob = json.dumps(obj, sort_keys=True, ensure_ascii=False, default=str, separators=(",", ":"))
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:length]


def file_hash(path: str | os.PathLike, length: int | None = 16) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:length]


# ----------------------------------------------------------------------------- integrity
def file_record(path: Path) -> dict:
    """What ``COMPLETE.json`` records of one file: its size and sha256."""
    return {"size": path.stat().st_size, "sha256": file_hash(path, None)}


def file_problem(path: Path, recorded: dict, full: bool = True, name: str | None = None) -> str | None:
    """Why ``path`` (called ``name`` in the message) is not the file that was recorded (None: it is).
    ``full=False`` hashes only files up to ``CHEAP_HASH_BYTES`` (larger ones are checked by size)."""
    name = name or path.name
    if not path.is_file():
        return f"{name} is missing"
    size = path.stat().st_size
    if size != recorded["size"]:
        return f"{name} has {size} bytes, {recorded['size']} when it was written"
    if (full or size <= CHEAP_HASH_BYTES) and file_hash(path, None) != recorded["sha256"]:
        return f"{name} was modified (same size, different sha256)"
    return None


def check_file(path: str | os.PathLike) -> Path:
    """``path`` itself if it is not the top-level file of a cache entry, or is and still matches the
    size and sha256 its ``COMPLETE.json`` recorded; else ``ValueError`` naming the file (readers of
    cached files outside ``sert``, such as ``sert-report``, go through this)."""
    path = Path(path)
    real = path.resolve()
    marker = real.parent / COMPLETE
    if not marker.is_file():
        return path
    files = read_json(marker).get("files")
    recorded = files.get(real.name) if isinstance(files, dict) else None
    if recorded is None:
        return path
    why = file_problem(real, recorded)
    if why:
        raise ValueError(f"{path}: {why} — the cache entry {real.parent} is damaged; rerun its step to rebuild it")
    return path


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

    def _files(self) -> list[Path]:
        return sorted(p for p in self.dir.rglob("*") if p.is_file() and p.name != COMPLETE and not p.name.startswith("."))

    def finish(self, summary: dict, material: Any) -> dict:
        """Mark the entry complete: ``COMPLETE.json`` with the summary and every file's size and sha256."""
        files = {str(p.relative_to(self.dir)): file_record(p) for p in self._files()}
        record = {"step": self.step, "key": self.key, "files": files, "summary": summary, "material": material}
        write_json(self.dir / COMPLETE, record)
        return record

    def problem(self, verify: str = "fast") -> str | None:
        """Why this complete entry must not be served (None: it matches what ``finish`` recorded).

        ``verify="fast"`` checks every file's size and the sha256 of files up to ``CHEAP_HASH_BYTES``;
        ``"full"`` hashes every file. An entry finished before files were recorded with their hashes gets
        them now (its files must still exist)."""
        try:
            record = self.record()
            files = record["files"]
        except (OSError, ValueError, KeyError, TypeError) as e:
            return f"{COMPLETE} is unreadable ({e})"
        if isinstance(files, list):  # written before integrity records: record the files as they are now
            missing = [f for f in files if not (self.dir / f).is_file()]
            if missing:
                return f"{missing[0]} is missing"
            with contextlib.suppress(OSError):  # a read-only cache is served as it is
                write_json(self.dir / COMPLETE, {**record, "files": {f: file_record(self.dir / f) for f in files}})
            return None
        for rel, recorded in files.items():
            why = file_problem(self.dir / rel, recorded, full=verify == "full", name=rel)
            if why:
                return why
        return None

    def remove_temp_files(self) -> None:
        """Delete the hidden ``.*.tmp`` files and directories of writes a failed build left half done."""
        for p in sorted(self.dir.rglob(".*.tmp"), reverse=True) if self.dir.is_dir() else []:
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)

    def discard(self) -> None:
        """Delete the entry's files (a damaged entry is rebuilt from scratch, never resumed from)."""
        shutil.rmtree(self.dir, ignore_errors=True)

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
