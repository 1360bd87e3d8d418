"""Several processes, one run: torchrun with 2 processes on gloo (CPU) through the real CLI, tiny model.

Two processes must give one process's results (same global batches, token-weighted loss across ranks), with
one complete cache entry per step and one run.json, written by rank 0; a SIGKILL of rank 1 mid-training
resumes like a single-process run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import CSQA_ROWS, ONE_THREAD, ROOT, run_cli, run_dirs

from sert.artifacts import COMPLETE, read_json

# a random tiny model without dropout: dropout draws per process, so with it results are equal in law only
NO_DROPOUT = ["+model.random_init.resid_pdrop=0", "+model.random_init.embd_pdrop=0", "+model.random_init.attn_pdrop=0"]


def run_torchrun(*overrides: str, out: Path, nproc: int = 2, check: bool = True, env: dict | None = None,
                 timeout: int = 600) -> subprocess.CompletedProcess:
    """``torchrun --standalone --nproc_per_node=N -m sert ...`` with outputs and cache under ``out``."""
    full_env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "SERT_OUTPUT_DIR": str(out),
                "WANDB_MODE": "disabled", "HYDRA_FULL_ERROR": "1", **ONE_THREAD, **(env or {})}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "-m", "sert", *overrides]
    proc = subprocess.run(cmd, cwd=ROOT, env=full_env, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"torchrun sert {' '.join(overrides)} failed ({proc.returncode}):\n"
                             f"{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}")
    return proc


@pytest.fixture
def csqa_25(tmp_path: Path) -> list[str]:
    """25 training questions of different lengths and 2 test questions: global batches of 8, 8, 8 and 1
    (the last one leaves a process without a row)."""
    rows = [{"question": r["question"].replace("?", "?" + " Think." * (i % 5), 1), "answer": r["answer"]}
            for i in range(7) for r in CSQA_ROWS][:27]
    data, split = tmp_path / "csqa.json", tmp_path / "csqa.split.json"
    data.write_text(json.dumps(rows))
    split.write_text(json.dumps({"train": list(range(25)), "test": [25, 26]}))
    return [f"dataset.path={data}", f"dataset.split_file={split}"]


def finetune_args(data: list[str], *extra: str) -> list[str]:
    return ["stage=finetune", "model=tiny", *NO_DROPOUT, *data, "logger=none", "trainer.precision=fp32",
            "trainer.batch_size=8", "trainer.epochs=2", "trainer.logging_steps=1",
            "evaluate.max_new_tokens=4", "evaluate.label_only_max_new_tokens=4", *extra]


def steps_of(run_dir: Path) -> dict[str, dict]:
    return {s["step"]: s for s in read_json(run_dir / "run.json")["steps"]}


def losses(step: dict) -> list[float]:
    return [r["loss"] for r in read_json(Path(step["dir"]) / "log_history.json") if "loss" in r]


def assert_close(a: list[float], b: list[float], rel: float = 1e-3) -> None:
    assert len(a) == len(b) and a, (a, b)
    for i, (x, y) in enumerate(zip(a, b)):
        assert abs(x - y) <= rel * abs(y), f"step {i + 1}: {x} vs {y}"


def test_two_processes_train_like_one(tmp_path: Path, csqa_25):
    """2 processes x 4 rows = 1 process x 8 rows: the loss at every step within 1e-3 (relative), the same
    cache keys and eval metrics; the 2-process run leaves one complete entry per step and one run.json."""
    args = finetune_args(csqa_25)
    run_cli(*args, out=tmp_path / "one")
    run_torchrun(*args, out=tmp_path / "two")
    (one,), runs_two = run_dirs(tmp_path / "one"), run_dirs(tmp_path / "two")
    assert len(runs_two) == 1, runs_two  # rank 1 writes no run.json
    (two,) = runs_two
    rank1 = [d for d in (two.parent).iterdir() if d.name.endswith("-rank1")]
    assert len(rank1) == 1 and (rank1[0] / ".hydra").is_dir()  # rank 1's Hydra dir (its log), beside rank 0's
    rec = read_json(two / "run.json")
    assert rec["status"] == "ok" and rec["processes"] == 2
    s1, s2 = steps_of(one), steps_of(two)
    assert [s["key"] for s in s1.values()] == [s["key"] for s in s2.values()]  # the key ignores the process count
    assert_close(losses(s2["finetune"]), losses(s1["finetune"]))
    assert len(losses(s1["finetune"])) == 8  # 4 global batches x 2 epochs
    assert s2["finetune"]["summary"]["tokens"] == s1["finetune"]["summary"]["tokens"]  # summed over ranks
    assert s2["finetune"]["summary"]["train_loss"] == pytest.approx(s1["finetune"]["summary"]["train_loss"], rel=1e-3)
    assert s2["evaluate"]["summary"]["metrics"] == s1["evaluate"]["summary"]["metrics"]
    for step in ("finetune", "evaluate"):
        entries = [e for e in (tmp_path / "two/cache" / step).iterdir() if e.is_dir()]
        assert len(entries) == 1 and (entries[0] / COMPLETE).exists(), entries
        assert not [p for p in entries[0].iterdir() if p.name.startswith(".")], list(entries[0].iterdir())
    assert not (Path(s2["finetune"]["dir"]) / "checkpoints").exists()


def test_loop_trainer_refuses_several_processes(tmp_path: Path, csqa_25):
    proc = run_torchrun(*finetune_args(csqa_25, "trainer=loop"), out=tmp_path / "out", check=False,
                        env={"HYDRA_FULL_ERROR": "0"})
    assert proc.returncode != 0
    assert "trainer=loop trains in one process; under torchrun/accelerate use trainer=sft" in proc.stderr


def test_every_process_count_draws_the_same_global_batches():
    from sert.training.data import IGNORE, MaskableRows, RankBatches

    lengths = [3, 9, 4, 7, 1, 8, 2, 6, 5, 10, 11]  # batches of 4, 4 and 3 rows
    for epoch in (0, 1):
        def shares(world: int) -> list[list[list[int]]]:
            out = []
            for rank in range(world):
                sampler = RankBatches(lengths, 4, seed=7, rank=rank, world=world)
                sampler.set_epoch(epoch)
                out.append(list(sampler))
            return out

        (one,) = shares(1)
        assert sorted(i for b in one for i in b) == list(range(11)) and len(one) == len(RankBatches(lengths, 4, 7))
        for world in (2, 4):
            per_rank = shares(world)
            assert [sum((r[k] for r in per_rank), []) for k in range(len(one)) if len(one[k]) >= world] == \
                   [b for b in one if len(b) >= world]  # each global batch = the ranks' shares, in order
        four = shares(4)
        short = next(k for k, b in enumerate(one) if len(b) == 3)
        assert [r[short] for r in four] == [[-1 - one[short][0]], *([i] for i in one[short])]  # rank 0: a stand-in
    epochs = RankBatches(lengths, 4, 7, group=False)
    first = list(epochs)
    epochs.set_epoch(1)
    assert list(epochs) != first and sorted(sum(list(epochs), [])) == sorted(sum(first, []))  # reshuffled per epoch
    rows = MaskableRows([{"input_ids": [5, 6], "attention_mask": [1, 1], "labels": [-100, 6]}])
    assert rows[0]["labels"] == [-100, 6] and rows[-1]["labels"] == [IGNORE, IGNORE]
    assert rows[-1]["input_ids"] == [5, 6]


def test_batch_size_is_the_global_batch_and_must_split_across_processes(monkeypatch):
    from sert import distributed

    monkeypatch.setenv("WORLD_SIZE", "2")
    distributed.check_batch(8)
    with pytest.raises(ValueError, match=r"trainer.batch_size=3 \(the global batch\) does not split evenly across 2"):
        distributed.check_batch(3)
    monkeypatch.setenv("WORLD_SIZE", "1")
    distributed.check_batch(3)


@pytest.mark.slow
def test_sigkill_of_rank_1_mid_training_resumes_to_the_same_result(tmp_path: Path, csqa_25):
    """Rank 1 is killed while the second checkpoint is written (torchrun then stops rank 0); the rerun resumes
    from the first checkpoint and ends with the uninterrupted single-process run's losses and metrics."""
    args = finetune_args(csqa_25, "trainer.save_strategy=steps", "trainer.save_steps=2")
    run_cli(*args, out=tmp_path / "one")
    out = tmp_path / "two"
    killed = run_torchrun(*args, out=out, check=False,
                          env={"SERT_KILL_AT": "train.checkpoint_writing:2", "SERT_KILL_RANK": "1"})
    assert killed.returncode != 0
    (entry,) = [e for e in (out / "cache/finetune").iterdir() if e.is_dir()]
    assert not (entry / COMPLETE).exists() and [p.name for p in (entry / "checkpoints").iterdir()
                                                if not p.name.startswith(".")] == ["checkpoint-2"]
    run_torchrun(*args, out=out)
    s1, s2 = steps_of(run_dirs(tmp_path / "one")[0]), steps_of(run_dirs(out)[-1])
    assert s2["finetune"]["summary"]["resumed_from"] == "checkpoint-2"
    assert_close(losses(s2["finetune"]), losses(s1["finetune"]))
    assert s2["finetune"]["summary"]["train_loss"] == pytest.approx(s1["finetune"]["summary"]["train_loss"], rel=1e-3)
    assert s2["evaluate"]["summary"]["metrics"] == s1["evaluate"]["summary"]["metrics"]


@pytest.mark.slow
def test_sert_stage_on_two_processes_equals_one(tmp_path: Path, csqa_25):
    """stage=sert: generation, filter and evaluation run on rank 0 alone, self-training on both ranks; the
    artifacts and metrics are those of one process."""
    args = ["stage=sert", "model=tiny", *NO_DROPOUT, *csqa_25, "logger=none", "dataset.limit=8",
            "generation.max_new_tokens=16", "generation.batch_size=4", "filter.length.min_tokens=1",
            "filter.perplexity.min_ppl=0", "filter.rep2.max_rate=1.0", "trainer.precision=fp32",
            "trainer.batch_size=4", "trainer.max_steps=3", "trainer.logging_steps=1", "trainer.save_strategy=no",
            "evaluate.max_new_tokens=8"]
    run_cli(*args, out=tmp_path / "one")
    run_torchrun(*args, out=tmp_path / "two")
    (one,), (two,) = run_dirs(tmp_path / "one"), run_dirs(tmp_path / "two")
    s1, s2 = steps_of(one), steps_of(two)
    assert list(s2) == ["generate", "filter", "self_train", "evaluate"]
    assert {k: s["key"] for k, s in s1.items()} == {k: s["key"] for k, s in s2.items()}
    for step, name in (("generate", "candidates.jsonl"), ("filter", "selected.jsonl")):
        assert (Path(s2[step]["dir"]) / name).read_text() == (Path(s1[step]["dir"]) / name).read_text()
    assert_close(losses(s2["self_train"]), losses(s1["self_train"]))
    assert s2["evaluate"]["summary"]["metrics"] == s1["evaluate"]["summary"]["metrics"]
    for step in s2:
        entries = [e for e in (tmp_path / "two/cache" / step).iterdir() if e.is_dir()]
        assert len(entries) == 1 and (entries[0] / COMPLETE).exists(), (step, entries)


# ----------------------------------------------------------------------------- the cache protocol, in-process
def _cache_rank(rank: int, root: str, results) -> None:
    """One of 2 gloo processes asking ``ctx.cached`` for entries (what every step does)."""
    import time
    from datetime import timedelta

    os.environ.update(RANK=str(rank), WORLD_SIZE="2")
    import torch.distributed as dist
    from omegaconf import OmegaConf

    from sert.pipeline import Context

    dist.init_process_group("gloo", init_method=f"file://{root}/rendezvous", rank=rank, world_size=2,
                            timeout=timedelta(seconds=60))
    if rank == 1:  # a slow rank 1: rank 0 must not take an entry's lock again before rank 1 has read the entry
        from sert import artifacts

        lock = artifacts.CacheEntry.lock
        artifacts.CacheEntry.lock = lambda self: (time.sleep(0.5), lock(self))[1]
    ctx = Context(OmegaConf.create({"paths": {"cache_dir": f"{root}/cache"}}), Path(root) / f"run{rank}")
    built = []

    def build(d: Path) -> dict:
        built.append(rank)
        (d / f"out{rank}.txt").write_text("built")
        return {"by": rank}

    def broken(d: Path) -> dict:
        raise OSError("disk full")

    first = ctx.cached("gen", {"x": 1}, [], build)  # rank 0 alone builds
    again = ctx.cached("gen", {"x": 1}, [], build)  # a hit on both
    together = ctx.cached("train", {"x": 1}, [], build, all_ranks=True)  # both build, rank 0 records
    try:
        ctx.cached("gen", {"x": 2}, [], broken)
        failure = None
    except Exception as e:  # noqa: BLE001 - reported to the test
        failure = f"{type(e).__name__}: {e}"
    results.put((rank, built, first.summary["by"], first.cached, again.cached, together.summary["by"], failure))
    dist.destroy_process_group()


def test_rank_0_decides_builds_and_records_the_others_read_its_result(tmp_path: Path):
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    procs = [ctx.Process(target=_cache_rank, args=(r, str(tmp_path), results)) for r in range(2)]
    for p in procs:
        p.start()
    got = dict((r[0], r[1:]) for r in (results.get(timeout=120) for _ in procs))
    for p in procs:
        p.join(timeout=60)
    assert got[0] == ([0, 0], 0, False, True, 0, "OSError: disk full")
    built1, by, cached, again, together, failure = got[1]
    assert built1 == [1] and by == 0 and cached is False and again is True and together == 0  # built only "train"
    assert failure.startswith("RuntimeError: [gen] rank 0 did not complete")
    assert not (tmp_path / "run1" / "run.json").exists()
    assert (tmp_path / "cache/gen").is_dir() and len([e for e in (tmp_path / "cache/gen").iterdir() if e.is_dir()]) == 2
