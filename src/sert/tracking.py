"""Experiment trackers (the ``logger`` config group). A logger hears about each finished step."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sert.pipeline import Context, StepOutput


class NullLogger:
    """``logger=none``: everything stays in run.json and the artifacts on disk."""

    def start(self, ctx: Context) -> None:
        pass

    def log_step(self, out: StepOutput) -> None:
        pass

    def finish(self) -> None:
        pass
