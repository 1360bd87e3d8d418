"""Resource failures of a real run: a full disk (on a small tmpfs) and SIGTERM."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import ONE_THREAD, ROOT, run_cli, run_dirs


def _gen_args(sqa_jsonl: Path) -> list[str]:
    return ["stage=generate", "model=tiny", "device=cpu", "logger=none", f"dataset.path={sqa_jsonl}",
            "generation.max_new_tokens=12", "generation.batch_size=1", "generation.first_k=2",
            "generation.samples_per_token=2"]


# ----------------------------------------------------------------------------- a full disk
def _tmpfs_available() -> bool:
    if not shutil.which("unshare") or not shutil.which("mount"):
        return False
    probe = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "sh", "-c",
                            "mount -t tmpfs -o size=1M tmpfs /tmp"], capture_output=True)
    return probe.returncode == 0


def run_on_small_disk(args: list[str], out: Path, keep: Path, fill_at: str | None, mb: int = 4):
    """Run ``sert`` with its outputs on a private ``mb`` MB tmpfs mounted at ``out`` (a user+mount namespace),
    filling that disk at the fault point ``fill_at``; the tmpfs content is copied to ``keep`` afterwards."""
    out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "SERT_OUTPUT_DIR": str(out), "WANDB_MODE": "disabled",
           "HYDRA_FULL_ERROR": "0", **ONE_THREAD}
    if fill_at:
        env.update(SERT_FILL_DISK_AT=fill_at, SERT_FILL_DISK_FILE=str(out / "filler"))
    sert = " ".join(f"'{a}'" for a in [sys.executable, "-m", "sert", *args])
    script = (f"mount -t tmpfs -o size={mb}M tmpfs '{out}' && {{ {sert}; rc=$?; rm -f '{out}/filler'; "
              f"cp -a '{out}/.' '{keep}/'; exit $rc; }}")
    keep.mkdir(parents=True, exist_ok=True)
    return subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", script], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)


@pytest.mark.skipif(not _tmpfs_available(), reason="needs unshare to mount a private tmpfs")
def test_full_disk_is_one_line_marks_run_failed_and_cleans_temp_files(tmp_path, sqa_jsonl):
    out, keep = tmp_path / "disk", tmp_path / "kept"
    proc = run_on_small_disk(_gen_args(sqa_jsonl), out, keep, fill_at="generate.batch_saved:1")
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr and "During handling" not in proc.stderr, proc.stderr
    (line,) = [x for x in proc.stderr.splitlines() if "space" in x]  # one line says it, naming the entry
    assert line.startswith(f"[generate] no space left on the device writing {out}/cache/generate/")
    assert " free there; No space left on device): free some space and run the same command again" in line
    (run,) = run_dirs(keep)
    m = json.loads((run / "run.json").read_text())
    assert m["status"] == "failed" and m["error"]["step"] == "generate"
    assert m["error"]["type"] == "OSError" and "No space left on device" in m["error"]["message"]
    assert not (run / ".run.json.reserve").exists()
    (entry,) = [p for p in (keep / "cache" / "generate").iterdir() if p.is_dir()]
    assert not list(entry.rglob(".*.tmp")) and not (entry / "COMPLETE.json").exists()
    assert [p.name for p in (entry / "parts").iterdir()] == ["part-000000.jsonl"]  # finished work kept
    # space again: the same command resumes after the saved batch and finishes
    again = run_cli(*_gen_args(sqa_jsonl), out=keep)
    assert "resuming generation after 1/4 questions" in again.stdout + again.stderr


def test_run_json_records_the_failure_when_the_disk_is_full(tmp_path, monkeypatch):
    """The first write of the final run.json fails (no space): the reserved space is given back and the
    write retried, so run.json says failed with the job's own error."""
    import errno

    from conftest import compose

    from sert import pipeline

    cfg = compose("model=tiny", f"paths.cache_dir={tmp_path / 'cache'}")
    (tmp_path / "run").mkdir()
    ctx = pipeline.Context(cfg, tmp_path / "run")
    ctx.manifest.write()
    ctx.manifest.reserve()
    reserve = tmp_path / "run" / ".run.json.reserve"
    assert reserve.stat().st_size == 256 << 10
    real_write, calls = pipeline.write_json, []

    def write_json(path, obj):
        calls.append(reserve.exists())
        if reserve.exists():
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(path, obj)

    monkeypatch.setattr(pipeline, "write_json", write_json)
    ctx.manifest.finish("failed", OSError(errno.ENOSPC, "No space left on device"))
    assert calls == [True, False]
    m = json.loads((tmp_path / "run" / "run.json").read_text())
    assert m["status"] == "failed" and m["error"]["message"] == "[Errno 28] No space left on device"


def test_disk_full_message_names_path_and_free_space(tmp_path):
    import errno

    from sert.artifacts import disk_full_message

    msg = disk_full_message(OSError(errno.ENOSPC, "No space left on device"), tmp_path / "cache" / "x")
    free = shutil.disk_usage(tmp_path).free
    assert msg.startswith(f"no space left on the device writing {tmp_path / 'cache' / 'x'} (")
    assert " free there; No space left on device): free some space and run the same command again" in msg
    assert any(unit in msg for unit in ("B free", "KB free", "MB free", "GB free")) and free >= 0


def test_human_size_hand_checked():
    from sert.artifacts import human_size

    assert [human_size(n) for n in (0, 999, 1500, 262144, 4.2e9, 5e12, 7e15)] == [
        "0 B", "999 B", "1.5 KB", "262.1 KB", "4.2 GB", "5.0 TB", "7000.0 TB"]


# ----------------------------------------------------------------------------- SIGTERM
def test_sigterm_marks_run_failed_like_ctrl_c(tmp_path, sqa_jsonl):
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "SERT_OUTPUT_DIR": str(out), "WANDB_MODE": "disabled",
           "HYDRA_FULL_ERROR": "0", **ONE_THREAD}
    args = [*_gen_args(sqa_jsonl), "generation.max_new_tokens=200", "generation.first_k=5", "generation.samples_per_token=5"]
    proc = subprocess.Popen([sys.executable, "-m", "sert", *args], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and not list(out.glob("cache/generate/*/parts")):
        time.sleep(0.2)  # inside the generate step
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == -signal.SIGTERM, stderr
    assert "sert: terminated (SIGTERM); the run is marked failed in its run.json" in stderr
    assert "Traceback" not in stderr
    (run,) = run_dirs(out)
    m = json.loads((run / "run.json").read_text())
    assert m["status"] == "failed" and m["finished"] is not None
    assert m["error"] == {"type": "Terminated", "message": "terminated (SIGTERM)", "step": "generate"}
