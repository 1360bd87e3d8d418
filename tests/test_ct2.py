"""The CTranslate2 backend on the tiny random GPT-2: conversion cache, path dicts like the torch backend,
raw log-probs against a torch forward pass, per-question seeding, stop strings, int8, decode_ct2 vs
engine.decode, and stage=generate through the CLI."""

from __future__ import annotations

import json
import math

import pytest
import torch

pytest.importorskip("ctranslate2")

from conftest import run_cli, run_dirs  # noqa: E402

from sert import ct2  # noqa: E402
from sert.engine import DecodeStats, decode  # noqa: E402
from sert.generate import CANDIDATE_FIELDS  # noqa: E402
from sert.sampling import SamplingSpec, sample_batch  # noqa: E402
from sert.models import load_model  # noqa: E402

TINY = {"name_or_path": "tiny-random-gpt2", "gguf_file": None, "tokenizer": None, "dtype": "float32",
        "random_init": {"n_layer": 2, "n_embd": 32, "n_head": 2, "n_positions": 512, "seed": 0}}
ITEMS = [("a", "Question: Where do you keep milk cold? Answer:"), ("b", "Question: Is water wet? Answer:")]
PATH_KEYS = {"first_token", "first_token_rank", "sample", "text", "token_ids", "num_tokens", "ppl", "finish_reason"}


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    d = tmp_path_factory.mktemp("ct2cache")
    ct2.convert(TINY, str(d), "float32")
    return str(d)


@pytest.fixture(scope="module")
def tiny():
    return load_model(**{**TINY, "device": "cpu"})


def spec(**kw) -> SamplingSpec:
    return SamplingSpec(**{"max_new_tokens": 10, "stop": (), **kw})


def torch_logprobs(model, ids: list[int]) -> torch.Tensor:
    """log p(ids[i] | ids[:i]) for i >= 1 under the raw distribution, by one independent forward pass."""
    with torch.no_grad():
        lp = model(torch.tensor([ids])).logits[0].log_softmax(-1)
    return lp[:-1].gather(1, torch.tensor(ids[1:])[:, None]).squeeze(1)


def test_convert_is_cached_and_keyed(cache, monkeypatch):
    first = ct2.convert(TINY, cache, "float32")
    assert (first / "model.bin").exists() and (first / ct2.META).exists()
    meta = json.loads((first / ct2.META).read_text())
    assert meta["context_length"] == 512 and meta["quantization"] == "float32"

    def boom(*a, **k):
        raise AssertionError("reconverted")

    monkeypatch.setattr("sert.models.load_model", boom)
    assert ct2.convert(TINY, cache, "float32") == first  # second call: no load, no conversion
    other = {**TINY, "random_init": {**TINY["random_init"], "seed": 1}}
    assert ct2.model_key(other, "float32") != ct2.model_key(TINY, "float32") != ct2.model_key(TINY, "int8")
    with pytest.raises(ValueError, match="quantization"):
        ct2.convert(TINY, cache, "int4")
    with pytest.raises(ValueError, match="compute_type"):
        ct2.compute_type_of("float64")


def test_paths_like_the_torch_backend(cache, tiny):
    model, tok = tiny
    res = ct2.generate_ct2(TINY, ITEMS, spec(), seed=1, compute_type="float32", cache_dir=cache)
    ref = sample_batch(model, tok, [p for _, p in ITEMS], [q for q, _ in ITEMS], spec(), seed=1)
    assert [len(r) for r in res] == [25, 25]
    for (_, prompt), paths, ref_paths in zip(ITEMS, res, ref):
        assert set(paths[0]) == set(ref_paths[0]) == PATH_KEYS
        assert set(CANDIDATE_FIELDS) - {"qid", "question", "answer"} <= PATH_KEYS
        # the same top-5 first tokens, in rank order, 5 samples each
        assert [p["token_ids"][0] for p in paths] == [p["token_ids"][0] for p in ref_paths]
        assert [p["first_token_rank"] for p in paths] == [r for r in range(5) for _ in range(5)]
        assert [p["sample"] for p in paths] == list(range(5)) * 5
        for p in paths:
            assert p["num_tokens"] == len(p["token_ids"]) <= 10 and p["finish_reason"] in ("eos", "length")
            assert p["first_token"] == tok.decode(p["token_ids"][:1]) and p["text"] == tok.decode(p["token_ids"]).strip()


def test_float32_logprobs_are_raw_and_match_torch(cache, tiny):
    """With a warped sampler (T=0.5, top-k 5, top-p 0.8) the reported log-probs stay the raw ones."""
    model, tok = tiny
    s = spec(temperature=0.5, top_k=5, top_p=0.8, first_k=2, samples_per_token=3)
    paths = ct2.generate_ct2(TINY, ITEMS[:1], s, seed=2, compute_type="float32", cache_dir=cache)[0]
    pids = tok(ITEMS[0][1])["input_ids"]
    for p in paths:
        ref = torch_logprobs(model, pids + p["token_ids"])[len(pids) - 1:]
        assert p["ppl"] == pytest.approx(math.exp(-ref.mean().item()), rel=1e-4)
    # per token too, through the internal sampler
    path, tok2, _, _ = ct2._open(TINY, cache, "float32")
    gen = ct2._generator(path, "float32", 3)
    rows, lps, _ = ct2._sample_rows(gen, tok2, pids, [None] * 4, s, tok.eos_token_id)
    for row, lp in zip(rows, lps):
        ref = torch_logprobs(model, pids + row)[len(pids) - 1:]
        assert len(lp) == len(row) and torch.allclose(torch.tensor(lp), ref, atol=1e-4)


def test_seeded_per_question(cache):
    both = ct2.generate_ct2(TINY, ITEMS, spec(), seed=7, compute_type="float32", cache_dir=cache)
    alone = ct2.generate_ct2(TINY, ITEMS[1:], spec(), seed=7, compute_type="float32", cache_dir=cache)
    assert alone[0] == both[1]  # independent of the other questions in the call
    resumed = ct2.generate_ct2(TINY, ITEMS, spec(), seed=7, compute_type="float32", cache_dir=cache, start=1)
    assert resumed == alone
    other = ct2.generate_ct2(TINY, ITEMS[1:], spec(), seed=8, compute_type="float32", cache_dir=cache)
    assert [p["token_ids"] for p in other[0]] != [p["token_ids"] for p in alone[0]]


def test_raw_mode_and_stop_strings(cache, tiny):
    model, tok = tiny
    stops = ("a", "e", "o")  # frequent single bytes: most 40-token rows of the random model hit one
    paths = ct2.generate_ct2(TINY, ITEMS[:1], spec(mode="raw", max_new_tokens=40, stop=stops), seed=4,
                             compute_type="float32", cache_dir=cache)[0]
    assert [p["first_token_rank"] for p in paths] == [None] * 25 and [p["sample"] for p in paths] == list(range(25))
    stopped = [p for p in paths if p["finish_reason"] == "stop"]
    assert len(stopped) >= 5
    pids = tok(ITEMS[0][1])["input_ids"]
    for p in stopped:  # text cut before the stop string; ppl over the kept tokens only
        assert not any(s in p["text"] for s in stops) and not any(s in tok.decode(p["token_ids"]) for s in stops)
        if p["num_tokens"]:
            ref = torch_logprobs(model, pids + p["token_ids"])[len(pids) - 1:]
            assert p["ppl"] == pytest.approx(math.exp(-ref.mean().item()), rel=1e-4)
        else:
            assert p["ppl"] is None


def test_int8_runs(cache):
    res = ct2.generate_ct2(TINY, ITEMS[:1], spec(), seed=1, compute_type="int8", cache_dir=cache)
    assert len(res[0]) == 25 and all(p["ppl"] is None or math.isfinite(p["ppl"]) for p in res[0])
    assert ct2.convert(TINY, cache, "int8") != ct2.convert(TINY, cache, "float32")


def test_decode_ct2_greedy_matches_engine(cache, tiny):
    model, tok = tiny
    prompts = [p for _, p in ITEMS] + ["x" * 600]  # the last one overflows the 512-token context
    ref_stats, stats = DecodeStats(), DecodeStats()
    ref = decode(model, tok, prompts, max_new_tokens=12, batch_size=2, stop=("e",), stats=ref_stats)
    seen = []
    got = ct2.decode_ct2(TINY, prompts, max_new_tokens=12, batch_size=2, temperature=0.0, top_p=1.0, top_k=0,
                         stop=("e",), seed=0, compute_type="float32", cache_dir=cache, stats=stats,
                         on_batch=lambda idx, rs: seen.extend(idx))
    assert [(d.text, d.prompt_tokens) for d in got] == [(d.text, d.prompt_tokens) for d in ref]
    assert [d.finish_reason for d in got] == [d.finish_reason for d in ref]
    assert sorted(seen) == [0, 1, 2]
    assert (stats.truncated_prompts, stats.clamped) == (ref_stats.truncated_prompts, ref_stats.clamped) == (1, 1)
    part = ct2.decode_ct2(TINY, prompts, max_new_tokens=12, batch_size=2, temperature=0.0, top_p=1.0, top_k=0,
                          stop=(), seed=0, compute_type="float32", cache_dir=cache, skip={0, 2})
    assert part[0] is None and part[2] is None and part[1].text.startswith(got[1].text)


def test_cli_generate_backend_ctranslate2_killed_and_resumed(csqa_files, tmp_path):
    """stage=generate through the CLI; a run SIGKILLed after its 2nd question resumes to the same file."""
    data, split = csqa_files
    common = ["stage=generate", "model=tiny", f"dataset.path={data}", f"dataset.split_file={split}",
              "generation.max_new_tokens=8", "generation.backend=ctranslate2", "generation.ct2_compute_type=float32"]
    run_cli(*common, out=tmp_path / "a")
    whole = (run_dirs(tmp_path / "a")[-1] / "generate" / "candidates.jsonl").read_text()
    cands = [json.loads(x) for x in whole.splitlines()]
    assert len(cands) == 75 and set(CANDIDATE_FIELDS) <= set(cands[0])
    assert len(list((tmp_path / "a" / "cache" / "ct2").glob("*/model.bin"))) == 1

    p = run_cli(*common, out=tmp_path / "b", check=False, env={"SERT_KILL_AT": "ct2.question_saved:2"})
    assert p.returncode == -9
    parts = sorted((tmp_path / "b" / "cache" / "generate").glob("*/parts/part-*.jsonl"))
    assert [len(p.read_text().splitlines()) for p in parts] == [25, 25]  # two whole questions
    run_cli(*common, out=tmp_path / "b")
    assert (run_dirs(tmp_path / "b")[-1] / "generate" / "candidates.jsonl").read_text() == whole


def test_sampler_matches_torch_warp_in_distribution(cache, tiny):
    """ctranslate2 applies temperature -> top-k -> top-p (renormalised) like sert.sampling.warp: 600 first
    draws land on warp's support with warp's frequencies (seeded, so the check is deterministic)."""
    from sert.sampling import warp

    model, tok = tiny
    pids = tok(ITEMS[0][1])["input_ids"]
    with torch.no_grad():
        probs = warp(model(torch.tensor([pids])).logits[:, -1], 10, 0.5, 0.8)[0]
    path, tok2, _, _ = ct2._open(TINY, cache, "float32")
    s = spec(mode="raw", max_new_tokens=1, top_k=10, top_p=0.5, temperature=0.8)
    rows, _, _ = ct2._sample_rows(ct2._generator(path, "float32", 0), tok2, pids, [None] * 600, s, tok.eos_token_id)
    freq = torch.bincount(torch.tensor([r[0] for r in rows if r]), minlength=len(probs)).double() / 600
    support = set(probs.nonzero().squeeze(1).tolist())
    assert set(freq.nonzero().squeeze(1).tolist()) == support and 2 <= len(support) < 10
    assert (freq - probs.double()).abs().max() < 0.07  # ~3.5 standard errors at 600 draws
