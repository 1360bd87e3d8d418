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
    "history": [{...}, ...], "artifacts": [{"name", "type"}]}`` — for tests and for inspecting a run
    before ``wandb sync``."""
    import json

    from wandb.proto import wandb_internal_pb2 as pb

    out: dict[str, Any] = {"run": {}, "config": {}, "summary": {}, "history": [], "artifacts": []}

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
            out["history"].append({key_of(i): json.loads(i.value_json) for i in rec.history.item})
        elif kind == "artifact":
            out["artifacts"].append({"name": rec.artifact.name, "type": rec.artifact.type})
    return out


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
