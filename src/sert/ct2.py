"""Optional CTranslate2 backend (extra ``sert[ct2]``): path generation (``generation.backend=ctranslate2``)
and a text decoder for the local teacher / judge, on CPU-friendly int8 / float32 kernels.

``convert`` turns the HF model (a GGUF is dequantised on load) into a CTranslate2 model directory once,
cached under ``<cache_dir>/ct2/<key>/`` where the key hashes the model's identity (plus a size / mtime
fingerprint of local weight files), the weight quantization and the ctranslate2 version.

``generate_ct2`` runs the same top-k-alternatives scheme as ``sert.sampling.sample_batch``:
  1. the prompt's raw next-token log-probs (``Generator.forward_batch(return_log_probs=True)``) give the
     top-``first_k`` first tokens and their log-probs;
  2. prompt + first token is continued ``samples_per_token`` times (one batch of ``first_k *
     samples_per_token`` rows) with ctranslate2's own sampler (``sampling_topk`` / ``sampling_topp`` /
     ``sampling_temperature``); stop strings are checked in the per-step callback, which stops that row;
  3. with ``return_scores=True`` each callback step carries the sampled token's log-prob under the RAW
     (temperature-1, unwarped) distribution, so ``ppl`` needs no second pass and has exactly the torch
     backend's definition (checked against a torch forward pass in tests/test_ct2.py).

Seeds: ctranslate2 has one process-wide seed that each worker thread reads ONCE, when it first samples
(a ``thread_local`` std::mt19937). So ``ctranslate2.set_random_seed`` only acts on a Generator that has not
sampled yet: every question gets a fresh Generator (the model files are in the page cache, reloading
costs ~0.3-1.5 s for SmolLM2, measured) seeded from (seed, qid). Hence a question's samples depend only on (seed, qid, model,
compute type, settings), not on its neighbours or on a resume, as in the torch backend. The random
streams differ from torch's, so the two backends agree in distribution, not sample by sample.
"""

from __future__ import annotations

import contextlib
import fcntl
import gc
import logging
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from sert.artifacts import read_json, stable_hash, write_json
from sert.engine import Decoded, DecodeStats, decode_batches, path_record, stop_cut
from sert.faults import reached

log = logging.getLogger(__name__)

META = "sert_ct2.json"  # written last inside the converted directory
COMPUTE_TYPES = {"float32": "float32", "fp32": "float32", "int8": "int8", "int8_float32": "int8_float32",
                 "bfloat16": "bfloat16", "bf16": "bfloat16", "int8_bfloat16": "int8_bfloat16"}
# weights are stored in the precision the compute type needs (int8 weights are 4x smaller on disk)
QUANTIZATION = {"float32": "float32", "int8": "int8", "int8_float32": "int8", "bfloat16": "bfloat16",
                "int8_bfloat16": "int8"}


def _require():
    try:
        import ctranslate2
    except ImportError as e:
        raise ImportError("the ctranslate2 backend needs the optional package: pip install 'sert[ct2]' "
                          "(or pip install ctranslate2)") from e
    return ctranslate2


def compute_type_of(name: str) -> str:
    """Normalise a compute type and check this CPU supports it (one clear error otherwise)."""
    ct2 = _require()
    if name not in COMPUTE_TYPES:
        raise ValueError(f"ctranslate2 compute_type must be one of {sorted(COMPUTE_TYPES)}, got {name!r}")
    ct = COMPUTE_TYPES[name]
    supported = ct2.get_supported_compute_types("cpu")
    if ct not in supported:
        raise ValueError(f"ctranslate2 compute_type {ct!r} is not supported on this CPU "
                         f"(supported: {', '.join(sorted(supported))})")
    return ct


# ----------------------------------------------------------------------------- conversion
def _fingerprint(model_kwargs: dict) -> list:
    """Name, size and mtime of the local files the weights come from (none for hub ids / random init)."""
    root = Path(str(model_kwargs.get("name_or_path", ""))).expanduser()
    gguf = model_kwargs.get("gguf_file")
    if model_kwargs.get("random_init") is not None or not root.exists():
        return []
    files = [root / gguf] if gguf else sorted(p for p in root.rglob("*") if p.is_file())
    return [[str(p.relative_to(root)), p.stat().st_size, p.stat().st_mtime_ns] for p in files if p.exists()]


def _identity(model_kwargs: dict) -> dict:
    """The keys that name the weights; local paths made absolute so ``~/x`` and ``/root/x`` agree."""
    from sert.models import weights_identity

    ident = weights_identity(model_kwargs)
    for k in ("name_or_path", "tokenizer"):
        if ident[k] and Path(str(ident[k])).expanduser().exists():
            ident[k] = str(Path(str(ident[k])).expanduser().resolve())
    return ident


def model_key(model_kwargs: dict, quantization: str) -> str:
    ct2 = _require()
    identity = _identity(model_kwargs)
    return stable_hash({"model": identity, "files": _fingerprint(model_kwargs), "quantization": quantization,
                        "ctranslate2": ct2.__version__})


@contextlib.contextmanager
def _lock(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def convert(model_kwargs: dict, cache_dir: str, quantization: str = "int8") -> Path:
    """The CTranslate2 directory of this model and weight quantization, converting it on first use.

    The HF model is loaded with ``sert.models.load_model`` in float32 on CPU, saved with
    ``save_pretrained`` to a temp dir and converted by ``TransformersConverter``; the result is renamed
    into place atomically, so a killed conversion leaves nothing that looks finished."""
    ct2 = _require()
    from ctranslate2.converters import TransformersConverter

    from sert.engine import context_length
    from sert.models import load_model, save_model

    if quantization not in set(QUANTIZATION.values()) | {"int8_float32"}:
        raise ValueError(f"ctranslate2 quantization must be float32, bfloat16 or int8, got {quantization!r}")
    key = model_key(model_kwargs, quantization)
    out = Path(cache_dir).expanduser().resolve() / "ct2" / key
    if (out / META).exists():
        return out
    with _lock(out.parent / f".{key}.lock"):
        if (out / META).exists():  # another process converted it while we waited
            return out
        t0 = time.perf_counter()
        log.info("converting %s to ctranslate2 (%s) -> %s", model_kwargs.get("name_or_path"), quantization, out)
        model, tok = load_model(**{**model_kwargs, "dtype": "float32", "device": "cpu"})
        meta = {"model": _identity(model_kwargs),
                "quantization": quantization, "ctranslate2": ct2.__version__,
                "context_length": context_length(model), "eos_token_id": tok.eos_token_id,
                "architecture": type(model).__name__}
        with tempfile.TemporaryDirectory(prefix=f".{key}.", dir=out.parent) as tmp:
            hf = Path(tmp) / "hf"
            save_model(model, tok, hf)
            del model  # the converter loads its own copy: do not hold two (a 1.5B model is 7 GiB in fp32)
            gc.collect()
            staged = Path(tmp) / "ct2"
            TransformersConverter(str(hf), low_cpu_mem_usage=True).convert(str(staged), quantization=quantization)
            tok.save_pretrained(staged / "tokenizer")
            meta["convert_seconds"] = round(time.perf_counter() - t0, 1)
            write_json(staged / META, meta)
            os.replace(staged, out)
        log.info("converted in %.0f s", time.perf_counter() - t0)
    return out


def _open(model_kwargs: dict, cache_dir: str, compute_type: str):
    """(converted dir, tokenizer, meta, normalised compute type)."""
    from sert.models import load_tokenizer

    ct = compute_type_of(compute_type)
    path = convert(model_kwargs, cache_dir, QUANTIZATION[ct])
    return path, load_tokenizer(str(path / "tokenizer")), read_json(path / META), ct


def _generator(path: Path, compute_type: str, seed: int | None):
    """A fresh Generator; ``seed`` (if given) seeds its worker thread's sampler (see module doc)."""
    ct2 = _require()
    import torch

    if seed is not None:
        ct2.set_random_seed(seed % (2**32))
    return ct2.Generator(str(path), device="cpu", compute_type=compute_type, intra_threads=torch.get_num_threads())


# ----------------------------------------------------------------------------- path generation
def _stop_callback(tok, rows: list[list[int]], lps: list[list[float]] | None, stopped: list[bool],
                   stops: Sequence[str], tail: int):
    """ctranslate2 step callback (called for generated tokens only, never for prompt tokens): record each
    row's tokens (and raw log-probs), and stop a row once its recent text contains a stop string."""
    def callback(step) -> bool:
        row = rows[step.batch_id]
        row.append(step.token_id)
        if lps is not None:
            lps[step.batch_id].append(step.log_prob)
        if stops and stop_cut(tok.decode(row[-tail:]), stops) is not None:
            stopped[step.batch_id] = True
            return True
        return False
    return callback


def _sample_rows(gen, tok, prompt_ids: list[int], firsts: list[tuple[int, float] | None], spec, eos: int
                 ) -> tuple[list[list[int]], list[list[float]], list[str]]:
    """Continue the prompt (+ its first token and that token's log-prob, if given) once per entry of
    ``firsts``. Returns per row the completion token ids (first token included, EOS and anything after
    it excluded), their raw log-probs and the finish reason."""
    tail = max((len(s) for s in spec.stop), default=0) + 8
    rows = [[f[0]] if f else [] for f in firsts]
    lps = [[f[1]] if f else [] for f in firsts]
    finish = [""] * len(rows)
    for r, row in enumerate(rows):  # a first token can already end the path
        if row and row[0] == eos:
            finish[r] = "eos"
        elif row and spec.stop and stop_cut(tok.decode(row), spec.stop) is not None:
            finish[r] = "stop"
    todo = [r for r in range(len(rows)) if not finish[r]]
    budget = spec.max_new_tokens - (1 if firsts[0] else 0)
    if todo and budget > 0:
        new: list[list[int]] = [list(rows[r]) for r in todo]  # the callback's stop check sees the first token
        new_lps: list[list[float]] = [[] for _ in todo]
        stopped = [False] * len(todo)
        # return_scores makes each step report its token's log-prob under the RAW distribution (ctranslate2
        # takes it before temperature / top-k / top-p; tests/test_ct2.py checks it against torch)
        gen.generate_batch(
            [tok.convert_ids_to_tokens(prompt_ids + rows[r]) for r in todo], max_length=budget,
            include_prompt_in_result=False, end_token=[eos], return_end_token=True, return_scores=True,
            sampling_topk=spec.top_k, sampling_topp=spec.top_p, sampling_temperature=spec.temperature,
            callback=_stop_callback(tok, new, new_lps, stopped, spec.stop, tail))
        for j, r in enumerate(todo):
            sampled = new[j][len(rows[r]):]
            finish[r] = "eos" if eos in sampled else "stop" if stopped[j] else ""
            rows[r], lps[r] = new[j], lps[r] + new_lps[j]
    for r, row in enumerate(rows):  # EOS is not part of the completion
        if eos in row:
            n = row.index(eos)
            rows[r], lps[r] = row[:n], lps[r][:n]
    return rows, lps, [f or "length" for f in finish]


def question_seed(seed: int, qid: str) -> int:
    return int(stable_hash([seed, qid]), 16) % (2**32)


def _question(gen, tok, prompt: str, spec, eos: int) -> list[dict]:
    import numpy as np

    ids = tok(prompt)["input_ids"]
    K, S, P = spec.first_k, spec.samples_per_token, spec.paths_per_question
    if spec.mode == "topk_alternatives":
        logp = np.asarray(gen.forward_batch([ids], return_log_probs=True))[0, -1]
        top = np.argsort(-logp, kind="stable")[:K].tolist()
        firsts = [(top[p // S], float(logp[top[p // S]])) for p in range(P)]
        ranks = [p // S for p in range(P)]
    elif spec.mode == "raw":
        firsts, ranks = [None] * P, [None] * P
    else:
        raise ValueError(f"generation.mode must be topk_alternatives or raw, got {spec.mode!r}")
    rows, lps, finish = _sample_rows(gen, tok, ids, firsts, spec, eos)
    paths = []
    for p in range(P):
        first = firsts[p][0] if firsts[p] else (rows[p][0] if rows[p] else eos)
        paths.append(path_record(tok, rows[p], lps[p], finish[p], first, ranks[p],
                           p % S if ranks[p] is not None else p, spec.stop))
    return paths


def generate_ct2(model_kwargs: dict, items: list[tuple[str, str]], spec, seed: int, compute_type: str,
                 cache_dir: str, on_batch: Callable[[int, list[list[dict]]], None] | None = None,
                 start: int = 0) -> list[list[dict]]:
    """Paths for ``items`` = [(qid, prompt)] from item ``start`` on, with the same fields and meaning as
    ``sert.generate.generate_hf``; ``on_batch(i, [paths])`` after each question (for incremental saving)."""
    from tqdm import tqdm

    path, tok, meta, ct = _open(model_kwargs, cache_dir, compute_type)
    eos = tok.eos_token_id
    results: list[list[dict]] = []
    bar = tqdm(total=len(items) * spec.paths_per_question, initial=start * spec.paths_per_question,
               desc=f"generate[ct2 {ct}]", unit="sample", dynamic_ncols=True)
    t0 = time.perf_counter()
    for i in range(start, len(items)):
        qid, prompt = items[i]
        gen = _generator(path, ct, question_seed(seed, qid))
        paths = _question(gen, tok, prompt, spec, eos)
        del gen
        results.append(paths)
        if on_batch:
            on_batch(i, [paths])
        reached("ct2.question_saved")
        bar.update(spec.paths_per_question)
        bar.set_postfix(samples_s=f"{(bar.n - bar.initial) / (time.perf_counter() - t0):.1f}")
    bar.close()
    return results


# ----------------------------------------------------------------------------- text decoding (teacher / judge)
_GENERATORS: dict[tuple[str, str], object] = {}


def decode_ct2(model_kwargs: dict, prompts: Sequence[str], *, max_new_tokens: int, batch_size: int = 16,
               temperature: float = 0.0, top_p: float = 1.0, top_k: int = 0, stop: Sequence[str] = (),
               seed: int = 0, compute_type: str = "int8", cache_dir: str = "outputs/cache",
               on_batch: Callable[[list[int], list[Decoded]], None] | None = None,
               skip: set[int] | frozenset = frozenset(), stats: DecodeStats | None = None,
               min_new_tokens: int = 1, desc: str = "decode[ct2]") -> list[Decoded | None]:
    """``sert.engine.decode`` on a CTranslate2 model: same arguments (plus the compute type and the
    conversion cache), same results, same context clamping and left truncation; greedy when
    ``temperature == 0``. A row stops as soon as a stop string appears (engine.decode stops at EOS only
    and cuts the text afterwards: same text, fewer tokens spent). Sampling is seeded once per process
    and model (see the module doc): sampled outputs are reproducible for the same prompts, order and
    ``skip``, but not independent of them."""
    path, tok, meta, ct = _open(model_kwargs, cache_dir, compute_type)
    key = (str(path), ct)
    if key not in _GENERATORS:  # loading costs seconds for a 1.5B model: keep one per process
        _GENERATORS[key] = _generator(path, ct, seed)
    gen, eos = _GENERATORS[key], tok.eos_token_id
    sampling = ({"sampling_topk": top_k, "sampling_topp": top_p, "sampling_temperature": temperature}
                if temperature > 0 else {"sampling_topk": 1})
    tail = max((len(s) for s in stop), default=0) + 8

    def batch(start: int, rows: list[list[int]], budgets: list[int]) -> list[tuple[str, int, str]]:
        results: list[tuple[str, int, str]] = [("", 0, "")] * len(rows)
        for b in sorted(set(budgets)):  # one generate_batch per distinct budget (max_length is per call)
            idx = [r for r in range(len(rows)) if budgets[r] == b]
            new: list[list[int]] = [[] for _ in idx]
            stopped = [False] * len(idx)
            res = gen.generate_batch([tok.convert_ids_to_tokens(rows[r]) for r in idx], max_length=max(b, 1),
                                     include_prompt_in_result=False, end_token=[eos], return_end_token=True,
                                     callback=_stop_callback(tok, new, None, stopped, stop, tail), **sampling)
            for j, r in enumerate(idx):
                row = list(res[j].sequences_ids[0])
                n = row.index(eos) if eos in row else len(row)
                text = tok.decode(row[:n], skip_special_tokens=True)
                cut = stop_cut(text, stop)
                results[r] = (text, n, "eos" if n < len(row) else "length") if cut is None else (text[:cut], n, "stop")
        return results

    return decode_batches(tok, prompts, meta.get("context_length"), batch, max_new_tokens=max_new_tokens,
                          batch_size=batch_size, min_new_tokens=min_new_tokens, desc=desc, on_batch=on_batch,
                          skip=skip, stats=stats if stats is not None else DecodeStats())
