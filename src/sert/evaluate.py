"""``evaluate`` step (paper III-D): decode the test split with a checkpoint, extract answers, score
Acc / Fmt / Len / Rep.

Which model: ``evaluate.checkpoint`` (a checkpoint dir, or a training cache entry holding ``model/``),
else the one the stage declares, ``stage.evaluate_model``: the ``model/`` of that training step
(``self_train`` / ``distill`` / ``finetune``, run or reused from the cache if this run has not yet), or
``base``, the base model (zero-shot).

Which prompt: the prompt part of the format the checkpoint was trained on (``model/training_info.json``),
so the model continues exactly where its training text went on:
  * ``self_train`` (SERT):   ``Question: {q}. Answer:``
  * ``distill`` (RD, SERT+RD): ``Question: {q}. Answer: Let's think step by step.``
  * ``label_only`` (Finetune): ``Question: {q} Answer:`` — scored for Acc only.
The base model, or a checkpoint without that file, uses ``self_train`` unless ``evaluate.format`` says.

Decoding: ``sert.engine.decode`` (batched, length-sorted, KV cache, finished rows leave the batch), greedy
by default, in ``evaluate.dtype`` (auto: bf16 only where the hardware is fast at it), up to
``evaluate.max_new_tokens`` new tokens or EOS (trained models learned to emit EOS after the answer).
The prompt is never cut for a fair score; where the model's context is short, a row gets the new tokens
its context leaves (clamped, warned once, counted in the summary's ``decoding``).

Resume: every finished batch is appended (fsync'd) to ``predictions.partial.jsonl`` in the cache entry
(raw outputs keyed by qid); a killed run, rerun, decodes only the questions not in it.
Outputs: ``predictions.jsonl`` (qid, question, gold, output, reasoning, extracted, correct, format_ok,
finish_reason, and the labelled additions: correct_lenient, format_prefix, option_pred, correct_option)
and ``metrics.json`` {acc, fmt, len, rep, n, acc_lenient, fmt_prefix, limit_hit, acc_option};
``summary["metrics"]`` is the same dict. ``limit_hit``: share of outputs cut at the new-token budget;
``acc_option``: option-likelihood accuracy (``sert.likelihood``, ``evaluate.option_likelihood``).
"""

from __future__ import annotations

import logging
from pathlib import Path

from omegaconf import OmegaConf

from sert import faults
from sert.artifacts import append_jsonl, file_hash, read_jsonl_tolerant, write_json, write_jsonl
from sert.data import Record
from sert.engine import Decoded, DecodeStats, decode
from sert.hardware import resolve_dtype
from sert.likelihood import option_predictions
from sert.metrics import (compute_metrics, extract_answer, extract_answer_lenient, is_prefix_formatted,
                          is_well_formatted, split_reasoning)
from sert.models import load_model, resolve_device
from sert.config.data import DType
from sert.config.steps import EvaluateConfig
from sert.pipeline import Context, StepOutput
from sert.schema import EvaluateModel
from sert.training.steps import training_info

log = logging.getLogger(__name__)

FORMATS = ("self_train", "distill", "label_only")


def resolve_checkpoint(ctx: Context, ecfg: EvaluateConfig) -> tuple[Path | None, str, dict, list[StepOutput]]:
    """``(model_dir or None for the base model, format, key material, input StepOutputs)``."""
    if ecfg.checkpoint:
        path = Path(ecfg.checkpoint).expanduser().resolve()
        model_dir = path / "model" if (path / "model" / "config.json").exists() else path
        if not (model_dir / "config.json").exists():
            raise FileNotFoundError(f"evaluate.checkpoint: no model (config.json) in {path} or {path / 'model'}")
        weights = sorted(model_dir.glob("*.safetensors")) or sorted(model_dir.glob("*.bin"))
        ident = {"checkpoint": str(model_dir), "weights": [file_hash(w) for w in weights]}
        info = training_info(model_dir)
        return model_dir, ecfg.format or (info or {}).get("format") or "self_train", ident, []
    source = EvaluateModel(ctx.cfg.stage.evaluate_model)
    if source is EvaluateModel.base:
        return None, ecfg.format or "self_train", {"base": ctx.model_identity()}, []
    out = ctx.require(source.value)
    info = training_info(out.dir / "model") or {}
    return out.dir / "model", ecfg.format or info.get("format", "self_train"), {"step": out.step}, [out]


def prompt_for(prompts, fmt: str, rec: Record) -> str:
    """The prompt part of the trained text (``Prompts.training_pair``), e.g. ``Question: q. Answer:``."""
    return prompts.training_pair(fmt, rec, "")[0]


def generate(model, tokenizer, prompts: list[str], *, max_new_tokens: int, batch_size: int, greedy: bool = True,
             seed: int = 0, stats: DecodeStats | None = None) -> list[str]:
    """Continuations of ``prompts`` (decoded new tokens only) through the shared engine (``sert.engine``)."""
    sampling = {} if greedy else {"temperature": 1.0, "top_p": 0.95}
    outs = decode(model, tokenizer, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size, seed=seed,
                  desc="evaluate", stats=stats, **sampling)
    return [o.text for o in outs]


def score(records: list[Record], outputs: list[str], tokenizer, fmt: str, *, rep_n: int = 3,
          max_rep: float = 0.3, finish_reasons: list[str] | None = None) -> tuple[list[dict], dict]:
    """Prediction rows and the metrics dict for generated ``outputs``.

    Besides the paper's strict Acc/Fmt, each row carries ``correct_lenient`` (``extract_answer_lenient``:
    the last answer candidate when the strict extraction finds none) and ``format_prefix``
    (``is_prefix_formatted``); the metrics gain ``acc_lenient`` and ``fmt_prefix`` (labelled, not the paper's).
    With ``finish_reasons`` (the engine's eos | stop | length per output) each row carries its
    ``finish_reason`` and the metrics gain ``limit_hit``: the share of outputs cut at the new-token budget
    (a cut answer has no answer sentence, so a budget below the trained length biases Acc)."""
    label_only = fmt == "label_only"
    rows, ok, reason_len, out_toks, prefix = [], [], [], [], []
    for i, (rec, output) in enumerate(zip(records, outputs)):
        extracted = extract_answer(output, rec.choices, label_only=label_only)
        lenient = extract_answer_lenient(output, rec.choices, label_only=label_only)
        row = {"qid": rec.qid, "question": rec.question, "gold": rec.answer, "output": output,
               "reasoning": None, "extracted": extracted, "correct": extracted == rec.answer, "format_ok": None,
               "extracted_lenient": lenient, "correct_lenient": lenient == rec.answer, "format_prefix": None}
        if finish_reasons is not None:
            row["finish_reason"] = finish_reasons[i]
        if not label_only:
            reasoning, _ = split_reasoning(output)
            toks = tokenizer(output.strip(), add_special_tokens=False)["input_ids"]
            row["reasoning"] = reasoning
            row["format_ok"] = is_well_formatted(output, extracted, toks, rep_order=rep_n, max_rep=max_rep)
            row["format_prefix"] = is_prefix_formatted(output, rec.choices)
            ok.append(row["format_ok"])
            prefix.append(row["format_prefix"])
            reason_len.append(len(tokenizer(reasoning, add_special_tokens=False)["input_ids"]) if reasoning else 0)
            out_toks.append(toks)
        rows.append(row)
    correct = [r["correct"] for r in rows]
    lenient_ok = [r["correct_lenient"] for r in rows]
    if label_only:
        metrics = compute_metrics(correct, correct_lenient=lenient_ok)
    else:
        metrics = compute_metrics(correct, ok, reason_len, out_toks, correct_lenient=lenient_ok, format_prefix=prefix)
    if finish_reasons is not None:
        metrics["limit_hit"] = limit_hit_share(finish_reasons)
    return rows, metrics


def limit_hit_share(finish_reasons: list[str]) -> float | None:
    """Share of outputs whose decoding stopped at the new-token budget (finish_reason ``length``):
    ``["eos", "length", "eos", "stop"]`` -> 0.25."""
    return round(sum(r == "length" for r in finish_reasons) / len(finish_reasons), 4) if finish_reasons else None


def add_option_accuracy(rows: list[dict], metrics: dict, picks: list[dict], records: list[Record]) -> None:
    """Each prediction row gains ``option_pred``, ``option_logprobs`` and ``correct_option``; the metrics gain
    ``acc_option``, the option-likelihood accuracy (``sert.likelihood``; labelled, not the paper's)."""
    for row, pick, rec in zip(rows, picks, records):
        row.update(pick, correct_option=pick["option_pred"] == rec.answer)
    metrics["acc_option"] = round(sum(r["correct_option"] for r in rows) / len(rows), 4) if rows else None


def budget_check(model_dir: Path | None, max_new: int) -> int | None:
    """The longest training target (completion tokens) of the checkpoint, from ``training_info.json``
    (None for the base model or older checkpoints); warns when the new-token budget is below it: outputs as
    long as what the model was trained to write would be cut."""
    longest = (training_info(model_dir) or {}).get("longest_target_tokens") if model_dir else None
    if longest and max_new < longest:
        log.warning("evaluate budget %d new tokens is below the longest training target (%d tokens): long "
                    "answers will be cut (raise evaluate.max_new_tokens; the report shows the limit-hit share)",
                    max_new, longest)
    return longest


def warn_context(stats: DecodeStats, max_new: int) -> None:
    """One warning per step when the model's context cut the new-token budget or a prompt."""
    if stats.clamped or stats.truncated_prompts:
        log.warning("model context too short: %d of %d rows got fewer than max_new_tokens=%d new tokens (down to %s); "
                    "%d prompts were left-truncated (recorded in the step summary as 'decoding')",
                    stats.clamped, stats.prompts, max_new, stats.as_dict()["min_new_tokens_allowed"],
                    stats.truncated_prompts)


PARTIAL = "predictions.partial.jsonl"  # one line per decoded question, appended per batch: the resume point
_RAW = ("text", "num_tokens", "finish_reason", "prompt_tokens", "budget", "truncated")


def decode_resumable(model, tok, records: list[Record], prompts: list[str], d: Path, *, max_new_tokens: int,
                     batch_size: int, greedy: bool, seed: int, stats: DecodeStats
                     ) -> tuple[list[str], list[str], int]:
    """(outputs, their finish reasons, number of questions read back): decode ``prompts``, saving each finished batch durably in
    ``d/PARTIAL``; questions already there (a killed run) are read back, not decoded again. ``stats``
    covers every row, read back or decoded. (Greedy outputs do not depend on the batch a prompt lands in;
    sampled ones, ``greedy=false``, are seeded per batch, so a resumed sampled run differs from an
    uninterrupted one.)"""
    saved = {r["qid"]: r for r in read_jsonl_tolerant(d / PARTIAL)}
    done = {i for i, rec in enumerate(records) if rec.qid in saved}
    if done:
        log.info("resuming evaluation: %d/%d questions already decoded (%s)", len(done), len(records), d / PARTIAL)
    outputs: list[str | None] = [None] * len(records)
    reasons: list[str | None] = [None] * len(records)
    for i in done:
        row = Decoded(**{k: saved[records[i].qid][k] for k in _RAW})
        outputs[i], reasons[i] = row.text, row.finish_reason
        stats.count(row, max_new_tokens)

    def save(indices: list[int], results: list[Decoded]) -> None:
        for i, res in zip(indices, results):
            append_jsonl(d / PARTIAL, {"qid": records[i].qid, **{k: getattr(res, k) for k in _RAW}})
            outputs[i], reasons[i] = res.text, res.finish_reason
        faults.reached("evaluate.batch_saved")

    sampling = {} if greedy else {"temperature": 1.0, "top_p": 0.95}
    decode(model, tok, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size, seed=seed, desc="evaluate",
           on_batch=save, skip=done, stats=stats, **sampling)
    return outputs, reasons, len(done)


def run(ctx: Context) -> StepOutput:
    ecfg: EvaluateConfig = OmegaConf.to_object(ctx.cfg.evaluate)
    model_dir, fmt, ident, inputs = resolve_checkpoint(ctx, ecfg)
    if fmt not in FORMATS:
        raise ValueError(f"evaluate.format must be one of {FORMATS}, got {fmt!r}")
    ds = ctx.dataset(split=ecfg.split, limit=ecfg.limit)
    label_only = fmt == "label_only"
    max_new = ecfg.label_only_max_new_tokens if label_only else ecfg.max_new_tokens
    dtype = resolve_dtype(DType(ecfg.dtype).value, resolve_device(ctx.cfg.device))
    material = {"model": ident, "format": fmt, "prompt": getattr(ctx.prompts, fmt), "max_new_tokens": max_new,
                "dtype": dtype, "greedy": ecfg.greedy, "seed": ctx.cfg.seed if not ecfg.greedy else None,
                "fmt": {"rep_n": ecfg.fmt_rep_n, "max_rep": ecfg.fmt_max_rep},
                "answers": {"choice": ctx.prompts.answer_choice, "binary": ctx.prompts.answer_binary}}
    if ecfg.option_likelihood:  # keyed only when on: evaluate.option_likelihood=false keeps older entries' keys
        material["option_likelihood"] = {"context": ctx.prompts.label_only}

    longest = budget_check(model_dir, max_new)

    def build(d: Path) -> dict:
        if model_dir is None:
            model, tok = load_model(**{**ctx.model_kwargs(), "dtype": dtype})
        else:
            model, tok = load_model(str(model_dir), device=ctx.cfg.device, dtype=dtype,
                                    attention=ctx.cfg.model.attention)
        log.info("evaluating %s (%s format, %s) on %d %s records", model_dir or "the base model", fmt, dtype,
                 len(ds.records), ds.split)
        prompts = [prompt_for(ctx.prompts, fmt, r) for r in ds.records]
        decoding = DecodeStats()
        outputs, reasons, resumed = decode_resumable(model, tok, ds.records, prompts, d, max_new_tokens=max_new,
                                            batch_size=ecfg.batch_size, greedy=ecfg.greedy, seed=ctx.cfg.seed,
                                            stats=decoding)
        warn_context(decoding, max_new)
        rows, metrics = score(ds.records, outputs, tok, fmt, rep_n=ecfg.fmt_rep_n, max_rep=ecfg.fmt_max_rep,
                              finish_reasons=reasons)
        if ecfg.option_likelihood:
            add_option_accuracy(rows, metrics, option_predictions(model, tok, ctx.prompts, ds.records,
                                                                  batch_size=ecfg.batch_size), ds.records)
        write_jsonl(d / "predictions.jsonl", rows)
        write_json(d / "metrics.json", metrics)
        (d / PARTIAL).unlink(missing_ok=True)
        return {"format": fmt, "model": str(model_dir) if model_dir else "base", "split": ds.split, "dtype": dtype,
                "decoding": {**decoding.as_dict(), "resumed": resumed, "max_new_tokens": max_new,
                             "longest_training_target": longest}, "metrics": metrics}

    out = ctx.cached("evaluate", material, [ds, *inputs], build)
    m = out.summary["metrics"]
    print("evaluate: " + " ".join(f"{k}={v}" for k, v in m.items()) + f" -> {out.path('metrics.json')}")
    return out
