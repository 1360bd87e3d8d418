"""The filter chain and selector of paper II-A2 / III-A: ``stage=filter``.

Each filter is a class built from its config node (``_target_``) with a ``check(candidate)`` method
returning ``None`` (keep) or a short reason (drop). ``filter.order`` lists which filters run, in order;
the selector then keeps, per question, the surviving path with the lowest rep-2.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Sequence
from pathlib import Path

from sert.data import parse_choices_from_text
from sert.textstats import rep_n, words

log = logging.getLogger(__name__)


def unit_tokens(cand: dict, unit: str) -> list:
    """The units rep-n is computed over: the model's token ids (``tokens``) or word units (``words``)."""
    if unit == "words":
        return words(cand["text"])
    if unit == "tokens":
        if "token_ids" not in cand:
            raise ValueError(f"candidate {cand.get('qid')!r} has no token_ids (made elsewhere?): "
                             "set filter.rep2.unit=words to compute rep-2 over words")
        return cand["token_ids"]
    raise ValueError(f"unit must be 'tokens' or 'words', got {unit!r}")


class PatternFilter:
    """Drops non-reasoning outputs (paper Fig. 2): imitative, direct-response, repetitive-option."""

    def __init__(self, imitative: Sequence[str] = (r"Question\s*:", r"\bAnswer\s*:"),
                 direct_max_words: int = 6, direct_patterns: Sequence[str] = (), min_options_listed: int = 3,
                 option_label_re: str = r"\(([A-E])\)", drop_stopped: bool = True):
        self.imitative = [re.compile(p, re.I) for p in imitative]
        self.direct_max_words = direct_max_words
        self.direct_patterns = [re.compile(p, re.I) for p in direct_patterns]
        self.min_options_listed = min_options_listed
        self.option_label = re.compile(option_label_re)
        self.drop_stopped = drop_stopped

    def check(self, cand: dict) -> str | None:
        text = cand["text"]
        if self.drop_stopped and cand.get("finish_reason") == "stop":
            return "imitative: generation began a new question (cut at a stop string)"
        for rx in self.imitative:
            if rx.search(text):
                return f"imitative: matches /{rx.pattern}/"
        direct = self.direct_response(text, cand.get("question", ""))
        if direct:
            return direct
        listed = self.options_listed(text, cand.get("question", ""))
        if self.min_options_listed and listed >= self.min_options_listed:
            return f"repetitive options: re-lists {listed} answer choices"
        return None

    def direct_response(self, text: str, question: str) -> str | None:
        """Only an answer and little else: a label, an option text, yes/no, or at most ``direct_max_words``
        words of which one is an option label/text or yes/no."""
        stripped = text.strip()
        for rx in self.direct_patterns:
            if rx.fullmatch(stripped):
                return f"direct response: matches /{rx.pattern}/"
        ws = words(stripped)
        if len(ws) > self.direct_max_words:
            return None
        low = stripped.lower()
        options = [c.text.lower() for c in parse_choices_from_text(question)]
        if not ws or self.option_label.search(stripped) or any(o and o in low for o in options) \
                or {"yes", "no"} & set(ws):
            return f"direct response: {len(ws)} words, only an answer"
        return None

    def options_listed(self, text: str, question: str) -> int:
        """How many distinct answer choices the text re-lists: "(A)"-style labels or the option texts."""
        labels = set(self.option_label.findall(text))
        low = text.lower()
        texts = {c.label for c in parse_choices_from_text(question) if c.text and re.search(
            rf"\b{re.escape(c.text.lower())}\b", low)}
        return max(len(labels), len(texts))


class LengthFilter:
    """Drops completions shorter than ``min_tokens`` model tokens (paper: 25)."""

    def __init__(self, min_tokens: int = 25):
        self.min_tokens = min_tokens

    def check(self, cand: dict) -> str | None:
        n = cand["num_tokens"]
        return f"length: {n} < {self.min_tokens} tokens" if n < self.min_tokens else None


class Rep2Filter:
    """Drops completions whose rep-n (default bigram) exceeds ``max_rate`` (paper: 0.20)."""

    def __init__(self, max_rate: float = 0.20, n: int = 2, unit: str = "tokens"):
        self.max_rate, self.n, self.unit = max_rate, n, unit

    def check(self, cand: dict) -> str | None:
        rate = rep_n(unit_tokens(cand, self.unit), self.n)
        return f"rep-{self.n}: {rate:.3f} > {self.max_rate}" if rate > self.max_rate else None


class PerplexityFilter:
    """Drops completions whose perplexity is below ``min_ppl`` (paper: 5): latent paths are unlikely ones."""

    def __init__(self, min_ppl: float = 5.0):
        self.min_ppl = min_ppl

    def check(self, cand: dict) -> str | None:
        ppl = cand.get("ppl")
        if ppl is None:
            return "perplexity: undefined (empty completion)"
        return f"perplexity: {ppl:.2f} < {self.min_ppl}" if ppl < self.min_ppl else None


class Selector:
    """Per question, one surviving candidate.

    ``strategy=lowest_rep2`` (paper III-A): the lowest rep-n; ties -> lower first_token_rank (null ranks,
    i.e. raw mode, count as 0), then lower sample index, then file order.
    ``strategy=random`` (Fig. 4's "raw" arm: no filter, no rep-2 preference): a survivor drawn uniformly
    with ``random.Random`` seeded by (``seed``, qid) among the survivors ordered by (first_token_rank, sample),
    so the draw depends neither on the other questions nor on the file order."""

    STRATEGIES = ("lowest_rep2", "random")

    def __init__(self, n: int = 2, unit: str = "tokens", strategy: str = "lowest_rep2", seed: int = 0):
        if strategy not in self.STRATEGIES:
            raise ValueError(f"filter.selector.strategy must be one of {self.STRATEGIES}, got {strategy!r}")
        self.n, self.unit, self.strategy, self.seed = n, unit, strategy, seed

    def select(self, cands: list[dict]) -> list[dict]:
        if self.strategy == "random":
            return self._random(cands)
        best: dict[str, tuple] = {}
        for i, c in enumerate(cands):
            rate = rep_n(unit_tokens(c, self.unit), self.n)
            key = (rate, c.get("first_token_rank") or 0, c.get("sample") or 0, i)
            if c["qid"] not in best or key < best[c["qid"]][0]:
                best[c["qid"]] = (key, {**c, "rep2": rate})
        return [row for _, row in best.values()]

    def _random(self, cands: list[dict]) -> list[dict]:
        import random

        from sert.artifacts import stable_hash

        by_q: dict[str, list[dict]] = {}
        for c in cands:
            by_q.setdefault(c["qid"], []).append(c)
        out = []
        for qid, group in by_q.items():
            group = sorted(group, key=lambda c: (c.get("first_token_rank") or 0, c.get("sample") or 0))
            c = random.Random(stable_hash([self.seed, qid])).choice(group)
            out.append({**c, "rep2": rep_n(unit_tokens(c, self.unit), self.n)})
        return out


def apply_chain(cands: list[dict], chain: list[tuple[str, object]], selector: Selector) -> tuple[list, list, dict]:
    """Run ``chain`` = [(name, filter)] in order, then the selector.

    Returns (selected, rejected, stats): rejected rows carry ``dropped_by`` and ``reason``; stats is the
    funnel in chain order."""
    pool, rejected = list(cands), []
    funnel = []
    for name, flt in chain:
        kept = []
        for c in pool:
            reason = flt.check(c)
            if reason is None:
                kept.append(c)
            else:
                rejected.append({**c, "dropped_by": name, "reason": reason})
        funnel.append({"filter": name, "in": len(pool), "kept": len(kept), "dropped": len(pool) - len(kept),
                       "questions_with_path": len({c["qid"] for c in kept})})
        pool = kept
    selected = selector.select(pool)
    stats = {"candidates": len(cands), "questions": len({c["qid"] for c in cands}), "funnel": funnel,
             "selected": len(selected)}
    return selected, rejected, stats


def format_funnel(stats: dict) -> str:
    lines = [f"filter funnel: {stats['candidates']} candidates / {stats['questions']} questions",
             f"  {'filter':<12}{'in':>8}{'kept':>8}{'dropped':>9}{'questions':>11}"]
    for f in stats["funnel"]:
        lines.append(f"  {f['filter']:<12}{f['in']:>8}{f['kept']:>8}{f['dropped']:>9}{f['questions_with_path']:>11}")
    lines.append(f"  selected: {stats['selected']} paths (one per question with a surviving path)")
    return "\n".join(lines)


# what to loosen when a filter leaves nothing (formatted with that filter's config)
LOOSEN = {
    "length": "lower filter.length.min_tokens (now {min_tokens})",
    "rep2": "raise filter.rep2.max_rate (now {max_rate})",
    "perplexity": "lower filter.perplexity.min_ppl (now {min_ppl})",
    "pattern": "relax filter.pattern.* (imitative, direct_max_words, min_options_listed, drop_stopped; "
               "the reasons are in rejected.jsonl)",
}


class NoPathsError(ValueError):
    """The filter chain left no reasoning path to train on."""


def explain_no_paths(stats: dict, filter_cfg: dict) -> str:
    """One line: the funnel (how many each filter dropped) and which knob to loosen."""
    steps = ", ".join(f"{f['filter']} dropped {f['dropped']} ({f['kept']} left)" for f in stats["funnel"])
    line = (f"the filter chain kept 0 of {stats['candidates']} candidate paths ({stats['questions']} questions): "
            f"{steps or 'no filters'}")
    if not stats["candidates"]:
        return line + "; nothing to filter: check the generation step (generation.*, dataset.limit)"
    culprit = next((f["filter"] for f in stats["funnel"] if f["in"] and not f["kept"]), None)
    hint = LOOSEN.get(culprit, f"relax filter.{culprit}.*")
    try:
        hint = hint.format(**dict(filter_cfg[culprit]))
    except (KeyError, TypeError, ValueError):
        pass
    return (f"{line}; {culprit} left nothing: {hint}, or leave {culprit} out of filter.order, "
            "or sample more paths (dataset.limit, generation.max_new_tokens)")


REQUIRED = ("qid", "text", "num_tokens", "ppl")


def read_candidates(path: str | Path, tokenizable: bool = False) -> list[dict]:
    """Read a candidates.jsonl, failing with file:line on malformed rows or missing fields.

    ``tokenizable``: rows may lack ``num_tokens`` (``add_token_ids`` fills it from the text)."""
    from sert.artifacts import read_jsonl

    required = [k for k in REQUIRED if not (tokenizable and k == "num_tokens")]
    rows = read_jsonl(path)
    for i, r in enumerate(rows, 1):
        missing = [k for k in required if k not in r] if isinstance(r, dict) else required
        if missing:
            raise ValueError(f"{path}: row {i}: missing fields {missing} (candidates need {required})")
    if not rows:
        raise ValueError(f"{path}: no candidates")
    return rows


def needs_tokens(cands: list[dict], filter_cfg) -> bool:
    """Do these candidates lack model tokens the configured chain uses (``num_tokens``, or ``token_ids``
    for a rep-n over ``unit=tokens``)?"""
    from omegaconf import OmegaConf

    units = [OmegaConf.select(filter_cfg, f"{n}.unit") for n in [*filter_cfg.order, "selector"]]
    return any("num_tokens" not in c for c in cands) or (
        "tokens" in units and any("token_ids" not in c for c in cands))


def tokenizer_identity(m: dict) -> dict:
    """What identifies ``tokenizer_for(m)`` in a cache key."""
    if m.get("tokenizer"):
        return {"tokenizer": m["tokenizer"]}
    if m.get("random_init") is not None:
        return {"tokenizer": "byte-level"}
    return {"name_or_path": m["name_or_path"], "gguf_file": m.get("gguf_file")}


def add_token_ids(cands: list[dict], tok) -> int:
    """Fill ``token_ids`` (the text's tokens, no special tokens) and ``num_tokens`` where missing;
    returns how many rows were tokenized."""
    n = 0
    for c in cands:
        if "token_ids" not in c:
            c["token_ids"] = tok(c["text"], add_special_tokens=False)["input_ids"]
            n += 1
        c.setdefault("num_tokens", len(c["token_ids"]))
    return n


def rescore_ppl(ctx, cands: list[dict], spec: dict, ref: str) -> None:
    """``filter.ppl_model``: every candidate's ``ppl`` recomputed under that model (teacher-forced, fp32) on its
    question's generation prompt; the sampled value moves to ``ppl_sampled``."""
    from sert.likelihood import path_perplexities
    from sert.models import load_model, resolve_device

    prompts = {r.qid: ctx.prompts.generation_prompt(r) for r in ctx.dataset().records}
    unknown = sorted({c["qid"] for c in cands} - prompts.keys())
    if unknown:
        raise ValueError(f"filter.ppl_model={ref}: {len(unknown)} candidate question(s) are not in the dataset "
                         f"(first: {unknown[0]!r}), so their prompts are unknown")
    t0 = time.perf_counter()
    model, tok = load_model(**{**spec, "dtype": "float32", "device": resolve_device(ctx.cfg.device)})
    add_token_ids(cands, tok)  # a filter.input file with text only: the scoring model's tokens
    vocab = model.get_output_embeddings().weight.shape[0]
    if any(i >= vocab for c in cands for i in c["token_ids"]):
        raise ValueError(f"filter.ppl_model={ref}: its vocabulary ({vocab}) does not cover the sampled token ids; "
                         "score with a model that shares the generating model's tokenizer")
    ppls = path_perplexities(model, tok, [prompts[c["qid"]] for c in cands], [c["token_ids"] for c in cands])
    for c, ppl in zip(cands, ppls):
        c["ppl_sampled"], c["ppl"] = c["ppl"], ppl
    log.info("filter.ppl_model=%s: %d candidates rescored in %.1f s", ref, len(cands), time.perf_counter() - t0)


# ----------------------------------------------------------------------------- the step
def run(ctx):
    """``stage=filter``: apply ``filter.order`` then the selector to the generated (or given) candidates."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from sert.artifacts import file_hash, write_json, write_jsonl

    f = ctx.cfg.filter
    order = list(f.order)
    unknown = [n for n in order if not OmegaConf.is_dict(f.get(n)) or "_target_" not in f[n] or n == "selector"]
    if unknown:
        raise ValueError(f"filter.order names {unknown}, which are not filters defined under filter.*")
    tokenize = False
    if f.input:
        path = Path(f.input).expanduser().resolve()
        if not path.is_file():
            raise FileNotFoundError(f"filter.input={f.input}: no such file")
        inputs, src, source = [], path, {"file": file_hash(path)}
        # a file made elsewhere may carry text only: tokenize it with the configured model's tokenizer
        tokenize = needs_tokens(read_candidates(path, tokenizable=True), f)
        if tokenize:
            source["tokenizer"] = tokenizer_identity(ctx.model.load_kwargs())
    else:
        gen = ctx.require("generate")
        inputs, src, source = [gen], gen.path("candidates.jsonl"), {"generate": gen.key}
    chain_cfg = {n: OmegaConf.to_container(f[n], resolve=True) for n in order}
    sel_cfg = OmegaConf.to_container(f.selector, resolve=True)
    material = {"order": order, "filters": chain_cfg, "selector": sel_cfg, "source": source}
    ppl_model = f.get("ppl_model")
    if ppl_model:
        from sert.models import model_spec, weights_identity

        ppl_spec = model_spec(str(ppl_model))
        material["ppl_model"] = weights_identity(ppl_spec)

    def build(d: Path) -> dict:
        cands = read_candidates(src, tokenizable=tokenize)
        if tokenize:
            from sert.models import tokenizer_for

            n = add_token_ids(cands, tokenizer_for(ctx.model.load_kwargs()))
            log.info("filter.input: tokenized %d of %d candidates with the model's tokenizer %s", n, len(cands),
                     source["tokenizer"])
        if ppl_model:
            rescore_ppl(ctx, cands, ppl_spec, str(ppl_model))
        chain = [(n, instantiate(f[n], _convert_="all")) for n in order]
        for n, obj in chain:
            log.info("Instantiating filter <%s> %s", n, type(obj).__name__)
        selected, rejected, stats = apply_chain(cands, chain, instantiate(f.selector, _convert_="all"))
        write_jsonl(d / "selected.jsonl", selected)
        write_jsonl(d / "rejected.jsonl", rejected)
        stats = {"source": str(src), "order": order, **stats}
        write_json(d / "filter_stats.json", stats)
        metrics = {"filter/candidates": stats["candidates"], "filter/selected": stats["selected"]}
        for s in stats["funnel"]:
            for k in ("in", "kept", "dropped"):
                metrics[f"filter/{s['filter']}/{k}"] = s[k]
        return {"selected": stats["selected"], "funnel": stats, "metrics": metrics}

    out = ctx.cached("filter", material, inputs, build)
    print(format_funnel(out.summary["funnel"]))
    if not out.summary["selected"]:
        log.warning("%s", explain_no_paths(out.summary["funnel"], f))
    print(f"-> {out.path('selected.jsonl')}{' (cached)' if out.cached else ''}")
    return out

