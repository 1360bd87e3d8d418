"""Fault injection for kill tests: ``SERT_KILL_AT=<point>:<n>`` SIGKILLs the process the n-th time
the named point is reached (e.g. ``generate.batch_saved:2``, ``train.checkpoint_saved:1``); in a run of
several processes ``SERT_KILL_RANK=<r>`` limits it to rank ``r``.

Production code marks its durable moments with ``reached("<point>")``; without the environment
variable this is a dictionary lookup and nothing else. The tests use it to kill a real ``sert``
process at a chosen moment (after a partial artifact was written, while a checkpoint is written...)
and check that the rerun resumes correctly. SIGKILL gives the process no chance to clean up, as the
OOM killer or a closed laptop lid would not.
"""

from __future__ import annotations

import os
import signal
from collections import Counter

_hits: Counter = Counter()


def reached(point: str) -> None:
    spec = os.environ.get("SERT_KILL_AT")
    if not spec:
        return
    name, _, count = spec.rpartition(":")
    if not name:
        name, count = count, "1"
    if name != point or os.environ.get("SERT_KILL_RANK", os.environ.get("RANK", "0")) != os.environ.get("RANK", "0"):
        return
    _hits[point] += 1
    if _hits[point] == int(count):
        os.kill(os.getpid(), signal.SIGKILL)
