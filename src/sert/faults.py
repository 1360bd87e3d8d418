"""Fault injection for kill tests: ``SERT_KILL_AT=<point>:<n>`` SIGKILLs the process the n-th time
the named point is reached (e.g. ``generate.batch_saved:2``, ``train.checkpoint_saved:1``); in a run of
several processes ``SERT_KILL_RANK=<r>`` limits it to rank ``r``.

Production code marks its durable moments with ``reached("<point>")``; without the environment
variable this is a dictionary lookup and nothing else. The tests use it to kill a real ``sert``
process at a chosen moment (after a partial artifact was written, while a checkpoint is written...)
and check that the rerun resumes correctly. SIGKILL gives the process no chance to clean up, as the
OOM killer or a closed laptop lid would not.

``SERT_FILL_DISK_AT=<point>:<n>`` instead fills the filesystem of ``SERT_FILL_DISK_FILE`` at that moment
(the file grows until the disk is full): the tests run it on a small tmpfs to see what a full disk does.
"""

from __future__ import annotations

import errno
import os
import signal
from collections import Counter

_hits: Counter = Counter()


def _due(var: str, point: str) -> bool:
    spec = os.environ.get(var)
    if not spec:
        return False
    name, _, count = spec.rpartition(":")
    if not name:
        name, count = count, "1"
    if name != point or os.environ.get("SERT_KILL_RANK", os.environ.get("RANK", "0")) != os.environ.get("RANK", "0"):
        return False
    _hits[(var, point)] += 1
    return _hits[(var, point)] == int(count)


def reached(point: str) -> None:
    if _due("SERT_KILL_AT", point):
        os.kill(os.getpid(), signal.SIGKILL)
    if _due("SERT_FILL_DISK_AT", point):
        fill_disk(os.environ["SERT_FILL_DISK_FILE"])


def fill_disk(path: str) -> None:
    """Append to ``path`` until its filesystem has no space left."""
    with open(path, "ab", buffering=0) as f:
        chunk = bytes(1 << 16)
        while True:
            try:
                f.write(chunk)
            except OSError as e:
                if e.errno != errno.ENOSPC:
                    raise
                if len(chunk) == 1:
                    return
                chunk = chunk[: len(chunk) // 2]  # fill the last partial block too
