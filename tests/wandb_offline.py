"""Test helper: read an offline W&B run file (``run-<id>.wandb``) without uploading it, so tests can check
what a run logged (name, group, tags, config, summary, history, artifacts)."""

from __future__ import annotations

import os
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def read_offline_run(path: str | os.PathLike) -> dict:
    """Read an offline run's ``run-<id>.wandb`` (LevelDB-log framed protobuf records) into plain dicts:
    ``{"run": {id, name, group, tags, project, job_type}, "config": {...}, "summary": {...},
    "history": [{...}, ...], "artifacts": [{"name", "type"}], "exit_code": int | None,
    "tables": {key: {"columns": [...], "data": [[...], ...]}}, "images": {key: Path}}`` (the last table or
    image logged under each key, read from the run's ``files/``) — for tests and for inspecting a run
    before ``wandb sync``."""
    import json

    out: dict[str, Any] = {"run": {}, "config": {}, "summary": {}, "history": [], "artifacts": [], "exit_code": None,
                           "tables": {}, "images": {}}
    files = Path(path).parent / "files"

    def key_of(item: Any) -> str:
        return "/".join(item.nested_key) if item.nested_key else item.key

    for rec in _wandb_records(Path(path)):
        kind = rec.WhichOneof("record_type")
        if kind == "run":
            r = rec.run
            out["run"] = {"id": r.run_id, "name": r.display_name, "group": r.run_group, "tags": list(r.tags),
                          "project": r.project, "job_type": r.job_type}
            out["config"].update({u.key: json.loads(u.value_json) for u in r.config.update})
        elif kind == "config":
            out["config"].update({key_of(u): json.loads(u.value_json) for u in rec.config.update})
        elif kind == "summary":
            out["summary"].update({key_of(u): json.loads(u.value_json) for u in rec.summary.update})
        elif kind == "history":
            row: dict[str, Any] = {}
            for i in rec.history.item:  # media are nested: ("eval/predictions_table", "_type") -> a dict
                if len(i.nested_key) > 1:
                    row.setdefault(i.nested_key[0], {})["/".join(i.nested_key[1:])] = json.loads(i.value_json)
                else:
                    row[key_of(i)] = json.loads(i.value_json)
            out["history"].append(row)
            for key, value in row.items():
                if isinstance(value, dict) and value.get("_type") == "table-file":
                    out["tables"][key] = json.loads((files / value["path"]).read_text(encoding="utf-8"))
                elif isinstance(value, dict) and value.get("_type") == "image-file":
                    out["images"][key] = files / value["path"]
        elif kind == "artifact":
            out["artifacts"].append({"name": rec.artifact.name, "type": rec.artifact.type})
        elif kind == "exit":
            out["exit_code"] = rec.exit.exit_code
    return out


def read_offline_runs(root: str | os.PathLike) -> dict[str, dict]:
    """Every offline run under ``root``, one per run id: a run resumed in several processes (one
    ``offline-run-<time>-<id>`` directory each) is its latest part, as ``wandb sync`` leaves it."""
    parts = sorted(Path(root).rglob("offline-run-*/run-*.wandb"),
                   key=lambda p: (p.parent.name.split("-")[2], p.stat().st_mtime))  # offline-run-<time>-<id>
    runs: dict[str, dict] = {}
    for part in parts:  # the id from the directory name: a part cut short by a kill may hold no run record
        runs[part.parent.name.rsplit("-", 1)[1]] = read_offline_run(part)
    return runs


def _wandb_records(path: Path) -> Iterator[Any]:
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    if data[:4] != b":W&B":
        raise ValueError(f"{path}: not a W&B run file")
    block, pos, buf = 32768, 7, b""
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:  # block trailer: padding
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        pos += 7
        if kind == 0 and length == 0:
            pos += left - 7
            continue
        buf += data[pos:pos + length]
        pos += length
        if kind in (1, 4):  # FULL or LAST fragment: a complete record
            rec = pb.Record()
            rec.ParseFromString(buf)
            buf = b""
            yield rec
