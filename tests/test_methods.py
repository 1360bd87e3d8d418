"""The paper's four methods (Table II) end to end through the real CLI on the tiny model.

One shared output dir per test so the cache reuse between methods is asserted, as a sweep would see it:
SERT+RD reuses SERT's generation, filtering and self-training; RD reuses the teacher data."""

from __future__ import annotations

import json

from pathlib import Path

from conftest import run_cli, run_dirs
from fake_openai_server import FakeOpenAI
from sert.artifacts import read_json, read_jsonl

KEY = "sk-methods-test-secret"


def teacher_reply(prompt: str) -> str:
    for needle, label in (("milk", "B"), ("birds", "C"), ("sun", "A"), ("ice", "D")):
        if needle in prompt:
            return f" We think about what the question asks. Therefore, the answer is ({label})."
    return " I do not know."


def base_args(csqa_files, srv: FakeOpenAI) -> list[str]:
    data, split = csqa_files
    return ["model=tiny", "device=cpu", f"dataset.path={data}", f"dataset.split_file={split}",
            "generation.max_new_tokens=30", "generation.batch_size=3", "filter.length.min_tokens=10",
            "filter.perplexity.min_ppl=0", "filter.rep2.max_rate=1.0",  # a random model: keep some paths
            "trainer.max_steps=2", "trainer.batch_size=2", "trainer.save_strategy=no",
            "evaluate.max_new_tokens=8", "evaluate.label_only_max_new_tokens=4",
            f"teacher.base_url={srv.base_url}", "teacher.api_key_env=SERT_TEST_KEY", "teacher.max_retries=1"]


def steps_of(run_dir: Path) -> dict[str, dict]:
    return {s["step"]: s for s in read_json(run_dir / "run.json")["steps"]}


def test_four_methods_share_cached_work(tmp_path, csqa_files):
    out = tmp_path / "out"
    with FakeOpenAI(teacher_reply, api_key=KEY) as srv:
        args = base_args(csqa_files, srv)
        env = {"SERT_TEST_KEY": KEY}

        run_cli("stage=sert", *args, out=out, env=env)
        sert = steps_of(run_dirs(out)[-1])
        assert {"generate", "filter", "self_train", "evaluate"} <= set(sert)
        assert not any(s["cached"] for s in sert.values())
        selected = read_jsonl(Path(sert["filter"]["dir"]) / "selected.jsonl")
        assert selected, "the filter kept no path for self-training"
        train_data = read_jsonl(Path(sert["self_train"]["dir"]) / "train_data.jsonl")
        assert train_data[0]["completion"].endswith(" So the answer is (B) fridge.")
        metrics = read_json(Path(sert["evaluate"]["dir"]) / "metrics.json")
        assert set(metrics) >= {"acc", "fmt", "len", "rep", "n"} and metrics["n"] == 1

        run_cli("stage=sert_rd", *args, out=out, env=env)
        sert_rd = steps_of(run_dirs(out)[-1])
        for reused in ("generate", "filter", "self_train"):
            assert sert_rd[reused]["cached"] and sert_rd[reused]["key"] == sert[reused]["key"]
        assert not sert_rd["distill"]["cached"] and not sert_rd["teacher"]["cached"]
        calls_after_sert_rd = srv.total_calls
        assert calls_after_sert_rd == 3  # one teacher call per training question

        run_cli("stage=rd", *args, out=out, env=env)
        rd = steps_of(run_dirs(out)[-1])
        assert rd["teacher"]["cached"] and srv.total_calls == calls_after_sert_rd  # no second payment
        assert "self_train" not in rd and rd["distill"]["key"] != sert_rd["distill"]["key"]  # base init

        run_cli("stage=finetune", *args, out=out, env=env)
        finetune = steps_of(run_dirs(out)[-1])
        assert read_json(Path(finetune["evaluate"]["dir"]) / "metrics.json")["fmt"] is None  # Acc only

    for path in out.rglob("*"):
        if path.is_file():
            assert KEY not in path.read_text(errors="ignore"), f"API key leaked into {path}"


def test_evaluate_checkpoint_override_and_teacher_file(tmp_path, csqa_files):
    """RD with teacher data from a file (no endpoint), then `stage=evaluate evaluate.checkpoint=`."""
    data, split = csqa_files
    teacher_file = tmp_path / "teacher.jsonl"
    teacher_file.write_text("".join(
        f'{{"qid": "csqa-{i}", "completion": "Because it is so. Therefore, the answer is ({a})."}}\n'
        for i, a in enumerate("BCA")))
    out = tmp_path / "out"
    common = ["model=tiny", "device=cpu", f"dataset.path={data}", f"dataset.split_file={split}",
              "trainer.max_steps=2", "trainer.batch_size=2", "trainer.save_strategy=no", "evaluate.max_new_tokens=8"]
    run_cli("stage=rd", *common, f"teacher.input={teacher_file}", out=out)
    rd = steps_of(run_dirs(out)[-1])
    assert rd["teacher"]["summary"]["kept"] == 3
    checkpoint = Path(rd["distill"]["dir"]) / "model"
    run_cli("stage=evaluate", *common, f"evaluate.checkpoint={checkpoint}", out=out)
    ev = steps_of(run_dirs(out)[-1])["evaluate"]
    # the same weights decoded greedily on the same test data: the same predictions as RD's evaluation
    assert read_jsonl(Path(ev["dir"]) / "predictions.jsonl") == read_jsonl(Path(rd["evaluate"]["dir"]) / "predictions.jsonl")


def test_sweep_two_models_two_methods_wandb_offline_and_report(tmp_path, csqa_files):
    """Issue 6 acceptance: `sert -m model=... stage=...` with W&B offline; one group, eval metrics in each
    run's summary, a rerun is served from the cache, and the report has every Table II cell."""
    from test_tracking import OFFLINE, _offline_run

    from sert.report import build_report

    data, split = csqa_files
    out = tmp_path / "out"
    args = ["-m", "model=tiny,tiny-deep", "stage=finetune,sert", "device=cpu", f"dataset.path={data}",
            f"dataset.split_file={split}", "generation.max_new_tokens=30", "filter.length.min_tokens=10",
            "filter.perplexity.min_ppl=0", "filter.rep2.max_rate=1.0", "trainer.max_steps=2",
            "trainer.batch_size=2", "trainer.save_strategy=no", "evaluate.max_new_tokens=8",
            "evaluate.label_only_max_new_tokens=4", "logger=wandb", "logger.mode=offline"]
    run_cli(*args, out=out, env=OFFLINE)
    (sweep,) = list((out / "multiruns").glob("*/*"))
    runs = sorted(p.parent for p in sweep.rglob("run.json"))
    assert len(runs) == 4
    recs = [_offline_run(r) for r in runs]
    assert len({r["run"]["group"] for r in recs}) == 1
    assert {r["run"]["name"] for r in recs} == {f"{s}/{m}/commonsense_qa" for s in ("finetune", "sert")
                                                 for m in ("tiny", "tiny-deep")}
    assert all("evaluate/acc" in r["summary"] or "eval/acc" in r["summary"] for r in recs)
    # the Trainer's W&B callback adds TrainingArguments and the model config; their paths are portable too
    trained = [r for r in recs if "output_dir" in r["config"]]
    assert trained and all(r["config"]["output_dir"].startswith("<output>/cache/") for r in trained)
    assert not [r["run"]["name"] for r in recs if str(out) in json.dumps(r["config"])]

    text = build_report(sweep, plots=False)[0].read_text()
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| Model | Method"))
    acc = [c.strip() for c in lines[start].split("|")].index("CommonsenseQA Acc")
    rows = [line for line in lines[start + 2:] if line.startswith("|")][:4]
    assert sorted(r.split("|")[1].strip() + "/" + r.split("|")[2].strip() for r in rows) == [
        "tiny-deep/Finetune", "tiny-deep/SERT", "tiny/Finetune", "tiny/SERT"]
    assert len(rows) == 4 and all(row.split("|")[acc].strip() not in ("", "—") for row in rows), rows

    run_cli(*args, out=out, env=OFFLINE)  # the same sweep again: every step is a cache hit
    second = max((out / "multiruns").glob("*/*"), key=lambda p: p.stat().st_mtime)
    for r in second.rglob("run.json"):
        assert all(s["cached"] for s in read_json(r)["steps"]), r
