"""Latent reasoning path generation (paper II-A1, III-A): ``stage=generate``.

Every question gets ``first_k * samples_per_token`` paths, each scored with its ``ppl`` under the model's
raw distribution. The paths come from a backend built with ``hydra.utils.instantiate`` on
``generation.sampler._target_``, which ``generation.backend`` picks (``Backends``): ``HFBackend`` (the
batched KV-cache sampler of ``sert.sampling``), ``VLLMBackend`` (GPU machines) or ``CT2Backend``
(``sert.ct2``). All three take the same constructor arguments and the same call, and name what they add
to the cache key (``material``). Each finished batch is written as an atomic part file, so a killed run
resumes with the questions it has not finished.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, fields
from pathlib import Path

from hydra.utils import instantiate
from omegaconf import OmegaConf
from tqdm import tqdm

from sert import faults
from sert.artifacts import read_jsonl, write_jsonl
from sert.config.data import DType
from sert.config.steps import GenerationBackend, GenerationConfig, GenerationMode
from sert.engine import path_record
from sert.sampling import SamplingSpec, check_context, sample_batch

log = logging.getLogger(__name__)

CANDIDATE_FIELDS = ("qid", "question", "answer", "first_token", "first_token_rank", "sample", "text",
                    "num_tokens", "ppl", "finish_reason")
Items = list[tuple[str, str]]  # (qid, generation prompt) per question
Save = Callable[[list[int], list[list[dict]]], None]  # (indices into items, their paths): once they are final


# ----------------------------------------------------------------------------- the HF backend over a dataset
def generate_hf(model, tok, items: list[tuple[str, str]], spec: SamplingSpec, seed: int, batch_size: int,
                on_batch: Callable[[int, list[list[dict]]], None] | None = None, done: int = 0) -> list[list[dict]]:
    """Sample paths for ``items`` = [(qid, prompt)], ``batch_size`` questions at a time; ``on_batch(i,
    paths)`` after each batch (``i`` = index of its first item). ``done``: questions resumed (progress bar)."""
    results: list[list[dict]] = []
    P = spec.paths_per_question
    # the bar counts finished paths and moves at every decoding step (a batch of 8 questions is 200 paths
    # sampled together: counting whole batches would leave it at 0 for minutes); the postfix shows the step
    bar = tqdm(total=(done + len(items)) * P, initial=done * P, desc="generate", unit="sample", dynamic_ncols=True,
               mininterval=1.0)
    t0 = time.perf_counter()
    for i in range(0, len(items), batch_size):
        chunk = items[i:i + batch_size]
        step = [0]

        def progress(n: int, step=step) -> None:
            step[0] += 1
            bar.set_postfix_str(f"step {step[0]}/{spec.max_new_tokens}", refresh=False)
            bar.update(n)

        paths = sample_batch(model, tok, [p for _, p in chunk], [q for q, _ in chunk], spec, seed, on_step=progress)
        results.extend(paths)
        if on_batch:
            on_batch(i, paths)
        bar.set_postfix(samples_s=f"{(bar.n - bar.initial) / (time.perf_counter() - t0):.1f}")
    bar.close()
    return results


def generate_vllm(model_kwargs: dict, items: list[tuple[str, str]], spec: SamplingSpec, seed: int) -> list[list[dict]]:
    """Same outputs through vLLM (GPU machines; an optional extra). Never run on a real vLLM here (no GPU):
    ``tests/test_generate_vllm.py`` checks it against a fake module with vLLM's output types.

    First step: one request per question with ``max_tokens=1, logprobs=first_k`` gives the top-k first
    tokens; then ``samples_per_token`` continuations of prompt + token with ``logprobs=0`` (the sampled
    token's logprob; vLLM reports raw, pre-warping logprobs by default)."""
    try:
        from vllm import LLM, SamplingParams
    except ImportError as e:
        raise ImportError("generation.backend=vllm needs the optional vllm package (pip install vllm, GPU "
                          "machine); use generation.backend=hf otherwise") from e
    if model_kwargs.get("gguf_file") or model_kwargs.get("random_init"):
        raise ValueError("generation.backend=vllm supports hub ids / local HF dirs only")
    llm = LLM(model=model_kwargs["name_or_path"], tokenizer=model_kwargs.get("tokenizer") or model_kwargs["name_or_path"],
              seed=seed, dtype=model_kwargs.get("dtype", "auto"))
    tok = llm.get_tokenizer()
    prompts = [p for _, p in items]
    K, S = spec.first_k, spec.samples_per_token
    common = dict(temperature=spec.temperature, top_k=spec.top_k, top_p=spec.top_p, stop=list(spec.stop),
                  max_tokens=spec.max_new_tokens - 1, logprobs=0, seed=seed)
    if spec.mode == "raw":
        outs = llm.generate(prompts, SamplingParams(n=K * S, **{**common, "max_tokens": spec.max_new_tokens}))
        return [[_vllm_path(tok, c, None, None, j, spec.stop) for j, c in enumerate(o.outputs)] for o in outs]
    first = llm.generate(prompts, SamplingParams(max_tokens=1, logprobs=K, temperature=0.0))
    conts, meta = [], []
    for q, o in enumerate(first):
        top = sorted(o.outputs[0].logprobs[0].items(), key=lambda kv: -kv[1].logprob)[:K]
        for rank, (tid, lp) in enumerate(top):
            conts.append({"prompt_token_ids": list(o.prompt_token_ids) + [tid]})
            meta.append((q, rank, tid, lp.logprob))
    outs = llm.generate(conts, SamplingParams(n=S, **common))
    results: list[list[dict]] = [[] for _ in items]
    for (q, rank, tid, lp0), o in zip(meta, outs):
        for j, c in enumerate(o.outputs):
            results[q].append(_vllm_path(tok, c, (tid, lp0), rank, j, spec.stop))
    return results


def _vllm_path(tok, c, first: tuple[int, float] | None, rank: int | None, sample: int,
               stops: Sequence[str]) -> dict:
    """A vLLM ``CompletionOutput`` as a path record: the first token (top-k mode) prepended, EOS dropped, the
    sampled tokens' logprobs (with ``logprobs=0`` each position holds the sampled token, maybe plus a top-1
    that differs from it), cut before a stop string as the other samplers do (vLLM cuts the text, not the ids)."""
    if c.logprobs is None:
        raise RuntimeError("vLLM returned no logprobs; the paths' perplexity needs SamplingParams(logprobs=0)")
    ids = list(c.token_ids)
    lps = [d[t].logprob for t, d in zip(ids, c.logprobs)]
    if first is not None:
        ids, lps = [first[0], *ids], [first[1], *lps]
    if ids and ids[-1] == tok.eos_token_id:
        ids, lps = ids[:-1], lps[:-1]
    reason = {"stop": "stop" if c.stop_reason is not None else "eos", "length": "length"}.get(c.finish_reason, c.finish_reason)
    return path_record(tok, ids, lps, reason, ids[0] if ids else tok.eos_token_id, rank, sample, stops)


# ----------------------------------------------------------------------------- the backends (one signature)
class HFBackend:
    """``generation.backend=hf``: ``sert.sampling.sample_batch`` over a transformers model, ``batch_size``
    questions at a time."""

    def __init__(self, g: GenerationConfig, model_kwargs: dict, dtype: str, cache_dir: str):
        self.model_kwargs, self.dtype, self.batch_size = {**model_kwargs, "dtype": dtype}, dtype, g.batch_size

    def material(self) -> dict:
        return {"dtype": self.dtype}

    def __call__(self, items: Items, spec: SamplingSpec, seed: int, save: Save, skip: set[int]) -> int:
        """Sample the paths of every item not in ``skip``; returns the paths whose budget the context clamped."""
        from sert.models import load_model

        model, tok = load_model(**self.model_kwargs)
        clamped = check_context(model, tok, items, spec)  # refuses a prompt that alone fills the context
        todo = [i for i in range(len(items)) if i not in skip]
        generate_hf(model, tok, [items[i] for i in todo], spec, seed, self.batch_size,
                    on_batch=lambda j, paths: save(todo[j:j + len(paths)], paths), done=len(skip))
        return clamped


class VLLMBackend(HFBackend):
    """``generation.backend=vllm``: ``generate_vllm`` (GPU machines), all questions in one call."""

    def __call__(self, items: Items, spec: SamplingSpec, seed: int, save: Save, skip: set[int]) -> int:
        todo = [i for i in range(len(items)) if i not in skip]
        if todo:
            save(todo, generate_vllm(self.model_kwargs, [items[i] for i in todo], spec, seed))
        return 0


class CT2Backend:
    """``generation.backend=ctranslate2``: ``sert.ct2.generate_ct2``, one question at a time in
    ``generation.ct2_compute_type`` (not the torch dtype, which is why that is its cache-key part)."""

    def __init__(self, g: GenerationConfig, model_kwargs: dict, dtype: str, cache_dir: str):
        self.model_kwargs, self.compute_type, self.cache_dir = model_kwargs, g.ct2_compute_type, cache_dir

    def material(self) -> dict:
        return {"ct2_compute_type": self.compute_type}

    def __call__(self, items: Items, spec: SamplingSpec, seed: int, save: Save, skip: set[int]) -> int:
        from sert.ct2 import generate_ct2

        todo = [i for i in range(len(items)) if i not in skip]
        generate_ct2(self.model_kwargs, [items[i] for i in todo], spec, seed, self.compute_type, self.cache_dir,
                     on_batch=lambda j, paths: save([todo[j]], paths))
        return 0


class Backends:
    """What ``generation.sampler._target_`` (``sert.generate.Backends.${generation.backend}``) names."""

    hf = HFBackend
    vllm = VLLMBackend
    ctranslate2 = CT2Backend


# ----------------------------------------------------------------------------- durable batches (resume)
def write_part(path: Path, rows: list[dict]) -> None:
    """Write one batch's rows as a unit: temp file, fsync, atomic rename. A kill leaves either the whole
    part or none of it (at most a hidden ``.part-*.tmp`` that readers ignore)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(r, ensure_ascii=False, default=str) + "\n" for r in rows)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def load_parts(parts: Path, paths_per_question: int) -> dict[str, list[dict]]:
    """Questions whose full set of paths is in a part file (qid -> rows); anything else is dropped."""
    done: dict[str, list[dict]] = {}
    for f in sorted(parts.glob("part-*.jsonl")) if parts.is_dir() else []:
        try:
            rows = read_jsonl(f)
        except ValueError as e:
            log.warning("ignoring unreadable generation part %s (%s)", f, e)
            continue
        by_q: dict[str, list[dict]] = {}
        for r in rows:
            by_q.setdefault(r.get("qid"), []).append(r)
        for q, rs in by_q.items():
            if len(rs) == paths_per_question and q not in done:
                done[q] = rs
    return done


# ----------------------------------------------------------------------------- the step
def spec_from_cfg(g: GenerationConfig) -> SamplingSpec:
    spec = {f.name: getattr(g, f.name) for f in fields(SamplingSpec)}
    return SamplingSpec(**{**spec, "mode": GenerationMode(g.mode).value, "stop": tuple(g.stop)})


def run(ctx):
    """``stage=generate``: candidates.jsonl for the configured split (cached by model + generation cfg)."""
    from sert.hardware import resolve_dtype
    from sert.models import resolve_device

    g: GenerationConfig = OmegaConf.to_object(ctx.cfg.generation)
    spec = spec_from_cfg(g)
    ds = ctx.dataset()
    prompts = ctx.prompts
    items = [(r.qid, prompts.generation_prompt(r)) for r in ds.records]
    by_qid = {r.qid: r for r in ds.records}
    dtype = resolve_dtype(DType(g.dtype).value, resolve_device(ctx.cfg.device))
    log.info("generation dtype: %s (generation.dtype=%s)", dtype, DType(g.dtype).value)
    backend = instantiate(g.sampler, g, ctx.model_kwargs(), dtype, ctx.cfg.paths.cache_dir)
    seed = ctx.cfg.seed if g.seed is None else g.seed
    material = {"model": ctx.model_identity(), "sampling": {**asdict(spec), "stop": list(spec.stop)},
                "backend": GenerationBackend(g.backend).value, "seed": seed, "prompt": prompts.generate,
                **backend.material()}

    def rows_of(qid: str, paths: list[dict]) -> list[dict]:
        rec = by_qid[qid]
        return [{"qid": qid, "question": rec.question, "answer": rec.answer, **p} for p in paths]

    def build(d: Path) -> dict:
        t0 = time.perf_counter()
        parts = d / "parts"  # one atomically written file per finished batch: a killed run resumes here
        done = load_parts(parts, spec.paths_per_question)
        done = {q: done[q] for q, _ in items if q in done}
        if done:
            log.info("resuming generation after %d/%d questions (their paths are in %s)", len(done), len(items), parts)
        resumed = len(done)

        def save(indices: list[int], paths: list[list[dict]]) -> None:
            rows = {items[i][0]: rows_of(items[i][0], ps) for i, ps in zip(indices, paths)}
            write_part(parts / f"part-{indices[0]:06d}.jsonl", [row for rs in rows.values() for row in rs])
            faults.reached("generate.batch_saved")
            done.update(rows)

        clamped = backend(items, spec, seed, save, {i for i, (q, _) in enumerate(items) if q in done})
        rows = [row for q, _ in items for row in done[q]]
        write_jsonl(d / "candidates.jsonl", rows)
        shutil.rmtree(parts, ignore_errors=True)
        seconds = time.perf_counter() - t0
        ntok = sum(r["num_tokens"] for r in rows)
        finish = {k: sum(r["finish_reason"] == k for r in rows) for k in ("eos", "stop", "length")}
        metrics = {"generate/candidates": len(rows), "generate/questions": len(items),
                   "generate/tokens": ntok, "generate/samples_per_s": round(len(rows) / max(seconds, 1e-9), 2),
                   "generate/clamped_rows": clamped, **{f"generate/finish_{k}": v for k, v in finish.items()}}
        return {"candidates": len(rows), "questions": len(items), "resumed_questions": resumed,
                "dtype": dtype, "clamped_rows": clamped, "metrics": metrics}

    out = ctx.cached("generate", material, [ds], build)
    print(f"generate: {out.summary['candidates']} candidates for {out.summary['questions']} questions "
          f"-> {out.path('candidates.jsonl')}{' (cached)' if out.cached else ''}")
    return out
