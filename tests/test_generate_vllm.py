"""``generation.backend=vllm`` against a fake ``vllm`` module with vLLM's output types (RequestOutput,
CompletionOutput, Logprob): no GPU here, so the adapter is checked for what it asks vLLM and how it turns
the answers into path records (the same fields, EOS and stop-string handling and perplexity as the HF and
ctranslate2 samplers)."""

from __future__ import annotations

import math
import sys
import types
from dataclasses import dataclass, field

import pytest

from sert.config.steps import GenerationConfig
from sert.generate import VLLMBackend, generate_vllm
from sert.sampling import SamplingSpec

EOS = 0
K, S, MAX_NEW = 3, 4, 12
LP = -0.5  # every sampled continuation token's logprob


class CharTokenizer:
    """One token per character; id 0 is EOS."""

    eos_token_id = EOS

    def encode(self, text: str) -> list[int]:
        return [ord(ch) for ch in text]

    def decode(self, ids) -> str:
        return "".join(chr(i) for i in ids if i != EOS)


@dataclass
class Logprob:
    logprob: float


@dataclass
class CompletionOutput:
    token_ids: list[int]
    logprobs: list[dict] | None
    finish_reason: str
    stop_reason: str | int | None = None


@dataclass
class RequestOutput:
    prompt_token_ids: list[int]
    outputs: list[CompletionOutput]


@dataclass
class SamplingParams:
    n: int = 1
    temperature: float = 1.0
    top_k: int = -1
    top_p: float = 1.0
    stop: list[str] = field(default_factory=list)
    max_tokens: int = 16
    logprobs: int | None = None
    seed: int | None = None


class LLM:
    """Deterministic stand-in: first-step top tokens 'a' > 'b' > 'c' > 'd'; sample j of a continuation is
    0: "ok" + EOS, 1: "xy" + the stop string "Question:" (vLLM: finish_reason stop, stop_reason the string),
    else: max_tokens tokens of "z" (length)."""

    calls: list[tuple[list, SamplingParams]] = []

    def __init__(self, model: str, tokenizer: str, seed: int, dtype: str):
        self.init = dict(model=model, tokenizer=tokenizer, seed=seed, dtype=dtype)
        self.tok = CharTokenizer()

    def get_tokenizer(self):
        return self.tok

    def generate(self, prompts: list, params: SamplingParams) -> list[RequestOutput]:
        LLM.calls.append((prompts, params))
        outs = []
        for p in prompts:
            ids = p["prompt_token_ids"] if isinstance(p, dict) else self.tok.encode(p)
            if params.max_tokens == 1:  # the first step: K + 1 logprobs (vLLM adds the sampled token)
                ranked = {ord(ch): Logprob(-0.1 * (i + 1)) for i, ch in enumerate("abcd"[:params.logprobs + 1])}
                outs.append(RequestOutput(ids, [CompletionOutput([ord("a")], [ranked], "length")]))
                continue
            outs.append(RequestOutput(ids, [self._sample(j, params) for j in range(params.n)]))
        return outs

    def _sample(self, j: int, params: SamplingParams) -> CompletionOutput:
        if j == 0:
            toks, reason, stop = [*map(ord, "ok"), EOS], "stop", None
        elif j == 1:
            toks, reason, stop = list(map(ord, "xyQuestion:")), "stop", "Question:"
        else:
            toks, reason, stop = [ord("z")] * params.max_tokens, "length", None
        # each position: the sampled token, plus a more likely top-1 token that was not sampled
        lps = [{t: Logprob(LP), ord("!"): Logprob(-0.01)} for t in toks]
        return CompletionOutput(toks, lps, reason, stop)


@pytest.fixture
def fake_vllm(monkeypatch):
    mod = types.ModuleType("vllm")
    mod.LLM, mod.SamplingParams = LLM, SamplingParams
    monkeypatch.setitem(sys.modules, "vllm", mod)
    LLM.calls = []
    return mod


SPEC = SamplingSpec(mode="topk_alternatives", first_k=K, samples_per_token=S, top_k=10, top_p=0.95,
                    temperature=1.0, max_new_tokens=MAX_NEW, stop=("Question:",))
MODEL = {"name_or_path": "/models/student", "tokenizer": None, "dtype": "bfloat16"}


def test_topk_alternatives_paths(fake_vllm):
    paths = generate_vllm(MODEL, [("q1", "Question: one? Answer:"), ("q2", "Question: two? Answer:")], SPEC, seed=3)
    first_prompts, first = LLM.calls[0]
    assert (first.max_tokens, first.logprobs, first.temperature) == (1, K, 0.0)
    conts, params = LLM.calls[1]
    # the paper's sampling (II-A): S continuations of prompt + each of the top-K first tokens, top-k 10, top-p 0.95
    assert (params.n, params.top_k, params.top_p, params.max_tokens, params.logprobs, params.seed) == (S, 10, 0.95, MAX_NEW - 1, 0, 3)
    assert params.stop == ["Question:"] and len(conts) == 2 * K
    assert conts[0]["prompt_token_ids"] == [*map(ord, "Question: one? Answer:"), ord("a")]
    assert [p["prompt_token_ids"][-1] for p in conts[:K]] == [ord("a"), ord("b"), ord("c")]  # not "d": top-K only

    assert len(paths) == 2 and all(len(q) == K * S for q in paths)
    q = paths[0]
    assert [p["first_token_rank"] for p in q] == [r for r in range(K) for _ in range(S)]
    assert [p["sample"] for p in q] == list(range(S)) * K
    assert [p["first_token"] for p in q[::S]] == ["a", "b", "c"]

    eos, stop, length = q[S], q[S + 1], q[S + 2]  # rank 1 ("b", first-token logprob -0.2)
    assert eos == {"first_token": "b", "first_token_rank": 1, "sample": 0, "text": "bok", "token_ids": [*map(ord, "bok")],
                   "num_tokens": 3, "ppl": pytest.approx(math.exp(-(-0.2 + 2 * LP) / 3)), "finish_reason": "eos"}
    # vLLM cuts the text at a stop string but not the token ids: the record is cut like the other samplers'
    assert (stop["text"], stop["token_ids"], stop["finish_reason"]) == ("bxy", [*map(ord, "bxy")], "stop")
    assert stop["ppl"] == pytest.approx(math.exp(-(-0.2 + 2 * LP) / 3))
    assert (length["num_tokens"], length["finish_reason"]) == (MAX_NEW, "length")  # first token + max_tokens - 1


def test_raw_mode_samples_k_times_s_paths_per_prompt(fake_vllm):
    from dataclasses import replace

    paths = generate_vllm(MODEL, [("q1", "Question: one? Answer:")], replace(SPEC, mode="raw"), seed=0)
    (prompts, params), = LLM.calls
    assert prompts == ["Question: one? Answer:"] and (params.n, params.max_tokens) == (K * S, MAX_NEW)
    assert len(paths[0]) == K * S
    assert {p["first_token_rank"] for p in paths[0]} == {None} and [p["sample"] for p in paths[0]] == list(range(K * S))
    assert paths[0][0]["text"] == "ok" and paths[0][0]["ppl"] == pytest.approx(math.exp(0.5))


def test_backend_saves_only_the_questions_not_done(fake_vllm, tmp_path):
    saved = []
    backend = VLLMBackend(GenerationConfig(backend="vllm"), MODEL, "bfloat16", str(tmp_path))
    items = [("q1", "Question: one? Answer:"), ("q2", "Question: two? Answer:"), ("q3", "Question: 3? Answer:")]
    assert backend(items, SPEC, 0, lambda idx, paths: saved.append((idx, paths)), skip={1}) == 0
    (idx, paths), = saved
    assert idx == [0, 2] and len(paths) == 2
    assert LLM.calls[0][0] == [items[0][1], items[2][1]]
    assert LLM.calls[1][0][0]["prompt_token_ids"][:-1] == list(map(ord, items[0][1]))
    assert LLM.calls[1][0][K]["prompt_token_ids"][:-1] == list(map(ord, items[2][1]))


def test_clear_errors(fake_vllm, monkeypatch):
    with pytest.raises(ValueError, match="hub ids / local HF dirs"):
        generate_vllm({**MODEL, "gguf_file": "m.gguf"}, [("q", "p")], SPEC, seed=0)
    monkeypatch.setitem(sys.modules, "vllm", None)  # not installed
    with pytest.raises(ImportError, match="pip install vllm"):
        generate_vllm(MODEL, [("q", "p")], SPEC, seed=0)
