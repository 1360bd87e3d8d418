"""Several processes, one run: who decides, who writes, who waits (torchrun, ``accelerate launch``, srun).

Under ``torch.distributed`` every process (rank) runs the same stage, but only rank 0 ("main") decides
cache hits and writes what a run leaves on disk: cache entries and their ``COMPLETE.json``, ``run.json``,
checkpoints (published and rotated), W&B. Training steps are built by every rank together (DDP through
transformers' Trainer); the other steps (generation, filter, teacher, evaluation, judge) are built by rank 0
alone while the other ranks wait for the entry's lock, then read rank 0's result. Outside a distributed
launch every function here is the single-process identity (rank 0 of 1).

The process group is started by ``setup()`` at the start of a run, with accelerate's ``PartialState`` (the
same state transformers' Trainer uses): gloo on CPU, NCCL on CUDA GPUs. A SLURM job with several tasks
and no launcher of its own (``srun python -m sert``, or Hydra's submitit launcher with ``tasks_per_node``)
gets the ``torch.distributed`` environment from submitit's ``TorchDistributedEnvironment``.
"""

from __future__ import annotations

import logging
import os
from typing import TypeVar

log = logging.getLogger(__name__)
T = TypeVar("T")


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def active() -> bool:
    """True in a run of several processes (``WORLD_SIZE`` > 1)."""
    return world_size() > 1


def is_main() -> bool:
    """True on the process that writes (rank 0; the only process outside a distributed launch)."""
    return rank() == 0


def export_slurm_env() -> bool:
    """A SLURM (or submitit local) job of several tasks started without torchrun: set ``RANK``,
    ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``/``MASTER_PORT`` from the job's environment.
    Returns whether it did."""
    if "RANK" in os.environ:
        return False
    if not any(k in os.environ for k in ("SLURM_JOB_ID", "SUBMITIT_LOCAL_JOB_ID")):
        return False
    try:
        from submitit import JobEnvironment
        from submitit.helpers import TorchDistributedEnvironment
    except ImportError:  # pragma: no cover - submitit missing: a one-task job, or the user's own launcher
        return False
    try:
        if JobEnvironment().num_tasks <= 1:
            return False
    except RuntimeError:  # not inside a job submitit recognises
        return False
    env = TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
    log.info("SLURM job with %d tasks: rank %d of %d (master %s:%s)", env.world_size, env.rank, env.world_size,
             env.master_addr, env.master_port)
    return True


def setup(device: str) -> None:
    """Join the job's process group (no-op for one process). ``device``: the run's resolved device."""
    export_slurm_env()
    if not active():
        return
    import torch.distributed as dist
    from accelerate import PartialState

    if not dist.is_initialized():
        PartialState(cpu=str(device) == "cpu")
    log.info("distributed run: rank %d of %d (%s backend)", rank(), world_size(), dist.get_backend())


def broadcast(value: T) -> T:
    """Rank 0's ``value`` on every rank (any picklable object)."""
    if not active():
        return value
    import torch.distributed as dist

    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier() -> None:
    if active():
        import torch.distributed as dist

        dist.barrier()


def all_sum(*values: float) -> list[float]:
    """The sum over ranks of each value (float64)."""
    if not active():
        return list(values)
    import torch
    import torch.distributed as dist

    t = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(t)
    return t.tolist()


def check_batch(batch_size: int) -> None:
    """``trainer.batch_size`` is the global batch: it must split evenly across the processes."""
    n = world_size()
    if batch_size % n:
        raise ValueError(f"trainer.batch_size={batch_size} (the global batch) does not split evenly across "
                         f"{n} processes: use a multiple of {n}")
