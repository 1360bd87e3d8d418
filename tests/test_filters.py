"""Filters, rep-n, selector, chain order and filter= presets, checked against hand-computed examples."""

from __future__ import annotations

import json
import math

import pytest
from conftest import compose
from hydra.utils import instantiate

from sert.filters import (LengthFilter, PatternFilter, PerplexityFilter, Rep2Filter, Selector, apply_chain,
                          read_candidates)
from sert.textstats import ngrams, rep_n, words

Q = "Where do you keep milk cold? Answer choices: (A) oven, (B) fridge, (C) shelf, (D) car, (E) bag."


def cand(text="some reasoning", qid="q1", ids=None, n=30, ppl=10.0, rank=0, sample=0, finish="eos"):
    return {"qid": qid, "question": Q, "answer": "B", "first_token": "x", "first_token_rank": rank,
            "sample": sample, "text": text, "token_ids": list(range(n)) if ids is None else ids,
            "num_tokens": n if ids is None else len(ids), "ppl": ppl, "finish_reason": finish}


# ----------------------------------------------------------------------------- rep-n
def test_rep2_hand_computed():
    # bigrams ab, ba, ab, ba -> 2 unique of 4 -> 1 - 2/4
    assert rep_n(list("ababa"), 2) == 0.5
    assert rep_n([1, 2, 3, 4], 2) == 0.0
    # aaaa: bigrams aa, aa, aa -> 1 - 1/3
    assert rep_n("aaaa", 2) == pytest.approx(2 / 3)
    # unigrams a b a c: 3 unique of 4
    assert rep_n("abac", 1) == 0.25
    assert rep_n([7], 2) == 0.0  # no bigram at all: nothing repeats
    assert ngrams([1, 2, 3], 2) == [(1, 2), (2, 3)]
    with pytest.raises(ValueError):
        ngrams([1], 0)


def test_words_unit():
    assert words("The fridge, the FRIDGE.") == ["the", "fridge", ",", "the", "fridge", "."]


def test_rep2_filter_threshold_and_units():
    f = Rep2Filter(max_rate=0.20)
    assert f.check(cand(ids=[1, 2, 3, 4, 5, 6])) is None
    # 1 2 1 2 1 2: bigrams 12 21 12 21 12 -> 1 - 2/5 = 0.6 > 0.2
    assert "0.600" in f.check(cand(ids=[1, 2, 1, 2, 1, 2]))
    # exactly at the threshold is kept (drop only rate > max_rate): 5 bigrams, 4 unique -> 0.2
    assert Rep2Filter(max_rate=0.2).check(cand(ids=[1, 2, 3, 1, 2, 9])) is None
    fw = Rep2Filter(max_rate=0.2, unit="words")
    assert fw.check(cand(text="go go go go")) is not None  # go go x3 -> 1 - 1/3
    with pytest.raises(ValueError, match="unit=words"):
        f.check({k: v for k, v in cand().items() if k != "token_ids"})


# ----------------------------------------------------------------------------- other filters
def test_length_filter():
    f = LengthFilter(min_tokens=25)
    assert f.check(cand(n=25)) is None
    assert f.check(cand(n=24)) == "length: 24 < 25 tokens"


def test_perplexity_filter():
    f = PerplexityFilter(min_ppl=5)
    assert f.check(cand(ppl=5.0)) is None
    assert f.check(cand(ppl=4.99)) is not None
    assert "undefined" in f.check(cand(ppl=None))


def test_perplexity_arithmetic():
    # ppl = exp(-mean log p): token probs 1/2 and 1/8 -> exp((ln2 + ln8)/2) = sqrt(16) = 4
    lps = [math.log(1 / 2), math.log(1 / 8)]
    assert math.exp(-sum(lps) / len(lps)) == pytest.approx(4.0)


@pytest.mark.parametrize("text,kind", [
    ("Question: Where is milk? Answer: fridge", "imitative"),
    ("the fridge keeps it cold. Answer: (B)", "imitative"),
    ("(B) fridge", "direct"),
    ("fridge", "direct"),
    ("Yes.", "direct"),
    ("", "direct"),
    ("(A) oven (B) fridge (C) shelf (D) car", "repetitive"),
    ("you could use an oven, a fridge, a shelf or a car to keep things in general", "repetitive"),
])
def test_pattern_filter_drops(text, kind):
    reason = PatternFilter().check(cand(text=text))
    assert reason is not None and reason.startswith(kind), reason


@pytest.mark.parametrize("text", [
    "Milk spoils when it is warm, so people keep it somewhere that stays cold all the time, like a fridge.",
    "A fridge.  It is cold inside and milk needs to stay cold to not go bad, unlike an oven.",
])
def test_pattern_filter_keeps_reasoning(text):
    assert PatternFilter().check(cand(text=text)) is None


def test_pattern_filter_stopped_and_knobs():
    assert PatternFilter().check(cand(finish="stop")).startswith("imitative")
    assert PatternFilter(drop_stopped=False).check(cand(finish="stop")) is None
    assert PatternFilter(min_options_listed=0).check(cand(text="(A) oven is hot, (B) fridge, (C) shelf, and more")) is None
    assert PatternFilter(direct_patterns=[r"so.*"], direct_max_words=0).check(cand(text="so it is")) is not None


# ----------------------------------------------------------------------------- selector + chain
def test_selector_lowest_rep2_and_ties():
    rows = [cand(qid="q1", ids=[1, 2, 1, 2, 1], rank=0, sample=0),   # rep2 0.5
            cand(qid="q1", ids=[1, 2, 3, 4, 5], rank=3, sample=1),   # rep2 0 (tie)
            cand(qid="q1", ids=[5, 6, 7, 8, 9], rank=1, sample=4),   # rep2 0 (tie): lower rank wins
            cand(qid="q1", ids=[9, 8, 7, 6, 5], rank=1, sample=2),   # same rank, lower sample wins
            cand(qid="q2", ids=[1, 1, 1], rank=4, sample=0)]          # only path of q2
    sel = {r["qid"]: r for r in Selector().select(rows)}
    assert sel["q1"]["token_ids"] == [9, 8, 7, 6, 5] and sel["q1"]["rep2"] == 0.0
    assert sel["q2"]["rep2"] == 0.5


def test_chain_order_and_funnel():
    rows = [cand(text="Question: x Answer: y", n=40),  # pattern
            cand(text="short but reasoning is here and long enough", n=5),  # length
            cand(text="fine reasoning text that is long enough to keep going on", ppl=2.0),  # perplexity
            cand(qid="q2", text="fine reasoning text that is long enough to keep going on")]
    chain = [("length", LengthFilter(25)), ("pattern", PatternFilter()), ("perplexity", PerplexityFilter(5))]
    selected, rejected, stats = apply_chain(rows, chain, Selector())
    assert [f["filter"] for f in stats["funnel"]] == ["length", "pattern", "perplexity"]
    assert [(f["in"], f["kept"], f["dropped"]) for f in stats["funnel"]] == [(4, 3, 1), (3, 2, 1), (2, 1, 1)]
    assert [f["questions_with_path"] for f in stats["funnel"]] == [2, 2, 1]
    assert [r["dropped_by"] for r in rejected] == ["length", "pattern", "perplexity"]
    assert [r["qid"] for r in selected] == ["q2"] and stats["selected"] == 1
    # order matters for attribution: pattern first takes the short imitative row too
    _, rej2, _ = apply_chain([cand(text="Question: a", n=3)], [("pattern", PatternFilter()), ("length", LengthFilter())], Selector())
    assert rej2[0]["dropped_by"] == "pattern"


@pytest.mark.parametrize("preset,order", [
    ("full", ["pattern", "length", "rep2", "perplexity"]),
    ("pattern_length_rep2", ["pattern", "length", "rep2"]),
    ("pattern_length", ["pattern", "length"]),
    ("pattern", ["pattern"]),
    ("raw", []),
])
def test_every_filter_preset_composes(preset, order):
    cfg = compose(f"filter={preset}", "filter.length.min_tokens=40")
    assert list(cfg.filter.order) == order
    objs = {n: instantiate(cfg.filter[n], _convert_="all") for n in ("pattern", "length", "rep2", "perplexity")}
    assert objs["length"].min_tokens == 40 and objs["rep2"].max_rate == 0.2 and objs["perplexity"].min_ppl == 5
    assert isinstance(instantiate(cfg.filter.selector), Selector)


def test_reorder_from_command_line_and_typo():
    assert list(compose("filter.order=[length,pattern]").filter.order) == ["length", "pattern"]
    with pytest.raises(Exception, match="min_tokns"):
        compose("filter.length.min_tokns=3")


def test_read_candidates_errors(tmp_path):
    bad = tmp_path / "c.jsonl"
    bad.write_text(json.dumps(cand()) + "\n{not json\n")
    with pytest.raises(ValueError, match="c.jsonl:2"):
        read_candidates(bad)
    bad.write_text(json.dumps({"qid": "q", "text": "t"}) + "\n")
    with pytest.raises(ValueError, match="missing fields"):
        read_candidates(bad)


def test_no_paths_message_shows_funnel_and_knob():
    from sert.filters import explain_no_paths

    rows = [cand(text="Question: x", n=40), cand(text="long enough reasoning here, honestly", n=5),
            cand(qid="q2", text="more reasoning that is fine but short", n=9)]
    _, _, stats = apply_chain(rows, [("pattern", PatternFilter()), ("length", LengthFilter(25))], Selector())
    msg = explain_no_paths(stats, compose("filter.length.min_tokens=25").filter)
    assert msg.startswith("the filter chain kept 0 of 3 candidate paths (2 questions): "
                          "pattern dropped 1 (2 left), length dropped 2 (0 left); length left nothing: "
                          "lower filter.length.min_tokens (now 25)")
    assert "\n" not in msg


def test_self_train_with_no_surviving_path_stops_with_the_funnel(tmp_path):
    """stage=self_train over candidates that the length filter all drops: one line, no traceback, and the
    job's run.json says failed in the self_train step."""
    from conftest import run_cli, run_dirs

    path = tmp_path / "cands.jsonl"
    path.write_text("".join(json.dumps(cand(qid=f"q{i}", text="a short but real reasoning path", n=7)) + "\n"
                            for i in range(3)))
    out = tmp_path / "out"
    proc = run_cli("stage=self_train", "model=tiny", "logger=none", f"filter.input={path}", out=out, check=False,
                   env={"HYDRA_FULL_ERROR": "0"})
    assert proc.returncode == 1 and "Traceback" not in proc.stdout + proc.stderr
    assert ("[self_train] NoPathsError: the filter chain kept 0 of 3 candidate paths (3 questions): "
            "pattern dropped 0 (3 left), length dropped 3 (0 left), rep2 dropped 0 (0 left), perplexity dropped 0 "
            "(0 left); length left nothing: lower filter.length.min_tokens (now 25)") in proc.stderr
    (run,) = run_dirs(out)
    m = json.loads((run / "run.json").read_text())
    assert m["status"] == "failed" and m["error"]["step"] == "self_train" and m["error"]["type"] == "NoPathsError"
    assert [s["step"] for s in m["steps"]] == ["filter"]  # the filter step itself finished (and is cached)


def test_add_token_ids_fills_missing_tokens_only():
    from sert.filters import add_token_ids
    from sert.models import byte_tokenizer

    tok = byte_tokenizer()  # one token per byte: "héllo" is 6 tokens
    rows = [{"qid": "a", "text": "héllo", "ppl": 9.0}, {"qid": "b", "text": "x", "token_ids": [1, 2], "ppl": 9.0}]
    assert add_token_ids(rows, tok) == 1
    assert rows[0]["num_tokens"] == 6 and len(rows[0]["token_ids"]) == 6
    assert rows[1]["token_ids"] == [1, 2] and rows[1]["num_tokens"] == 2


def test_filter_input_without_token_ids_is_tokenized_with_the_model_tokenizer(tmp_path):
    """stage=filter filter.input=FILE whose rows carry text but no token_ids/num_tokens: the tiny model's
    (byte-level) tokenizer counts the tokens, so length and rep-2 work on them."""
    from conftest import run_cli, run_dirs

    long_text = "the milk goes in the fridge because cold slows bacteria down"  # 60 bytes = 60 tokens
    rows = [{"qid": "q1", "question": Q, "answer": "B", "text": long_text, "ppl": 9.0},
            {"qid": "q2", "question": Q, "answer": "B", "text": "it is cold there, I think", "ppl": 9.0}]  # 25 bytes
    path = tmp_path / "cands.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "out"
    run_cli("stage=filter", "model=tiny", "logger=none", f"filter.input={path}", "filter.length.min_tokens=26",
            "filter.rep2.max_rate=0.5", out=out)
    (run,) = run_dirs(out)
    selected = [json.loads(line) for line in (run / "filter" / "selected.jsonl").read_text().splitlines()]
    assert [(r["qid"], r["num_tokens"], len(r["token_ids"])) for r in selected] == [("q1", 60, 60)]
    rejected = [json.loads(line) for line in (run / "filter" / "rejected.jsonl").read_text().splitlines()]
    assert [(r["qid"], r["reason"]) for r in rejected] == [("q2", "length: 25 < 26 tokens")]

def test_selector_random_strategy_is_seeded_per_question():
    rows = [cand(qid=f"q{q}", ids=[q, s, 1, 2, 1, 2], rank=s % 5, sample=s) for q in range(6) for s in range(25)]
    a = {r["qid"]: r["sample"] for r in Selector(strategy="random", seed=1).select(rows)}
    assert a == {r["qid"]: r["sample"] for r in Selector(strategy="random", seed=1).select(list(reversed(rows)))}
    # a question's draw does not depend on the other questions present
    assert {r["qid"]: r["sample"] for r in Selector(strategy="random", seed=1).select(rows[:25])} == {"q0": a["q0"]}
    b = {r["qid"]: r["sample"] for r in Selector(strategy="random", seed=2).select(rows)}
    assert a != b  # another seed, other draws (6 questions x 25 candidates: equal by chance with p = 25^-6)
    lowest = {r["qid"]: r["sample"] for r in Selector().select(rows)}
    assert set(lowest.values()) == {0}  # every path ties on rep-2 here: lowest_rep2 takes rank 0 / sample 0
    assert set(a.values()) != {0}
    with pytest.raises(ValueError, match="strategy"):
        Selector(strategy="best")


def test_raw_preset_uses_the_random_selector():
    cfg = compose("filter=raw", "seed=7")
    sel = instantiate(cfg.filter.selector)
    assert (sel.strategy, sel.seed) == ("random", 7)
    assert instantiate(compose("filter=full").filter.selector).strategy == "lowest_rep2"
