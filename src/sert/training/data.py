"""The SFT example builder: training examples as token ids, prompt masking at data preparation, a
padding-only collator (dynamic padding) and length-grouped batches.

The SFT convention (TRL): an example is ``(prompt, completion)``; the text trained on is
``prompt + completion + EOS``. With ``loss_on="answer"`` the labels are -100 over the prompt tokens, so
the loss covers only what the model must generate at inference; with ``"all"`` every token is a target.
EOS ends each example so a trained model stops after "So the answer is a." at evaluation.
The collator only pads (pad id for inputs, 0 for the attention mask, -100 for labels).
"""

from __future__ import annotations

import logging
import math
import random
from dataclasses import dataclass, field

import torch

log = logging.getLogger(__name__)

IGNORE = -100


@dataclass
class Example:
    prompt: str
    completion: str


@dataclass
class Tokenized:
    """Token-id examples plus what preparation did to them."""

    rows: list[dict]
    dropped: int = 0  # prompt alone fills max_length: nothing left to learn
    truncated: int = 0  # completion cut at max_length
    prefix_mismatch: int = 0  # tokenizer merged across the prompt/completion boundary (ids concatenated instead)
    lengths: list[int] = field(default_factory=list)


def tokenize_example(tokenizer, prompt: str, completion: str, *, max_length: int, loss_on: str = "answer",
                     add_eos: bool = True) -> tuple[dict | None, bool, bool]:
    """Token ids of one example -> ``(row | None, truncated, prefix_mismatch)``.

    The full text is tokenised once; the prompt's ids must be a prefix of it (TRL's check). If the
    tokenizer merged tokens across the boundary, the prompt's and the completion's ids are concatenated
    instead, which is also exactly what the model sees at inference (prompt ids, then generated ids)."""
    p_ids = tokenizer(prompt, add_special_tokens=True)["input_ids"]
    full = tokenizer(prompt + completion, add_special_tokens=True)["input_ids"]
    mismatch = full[: len(p_ids)] != p_ids
    if mismatch:
        full = p_ids + tokenizer(completion, add_special_tokens=False)["input_ids"]
    if add_eos and tokenizer.eos_token_id is not None:
        full = full + [tokenizer.eos_token_id]
    if len(p_ids) >= max_length:
        return None, False, mismatch
    truncated = len(full) > max_length
    full = full[:max_length]
    labels = list(full)
    if loss_on == "answer":
        labels[: len(p_ids)] = [IGNORE] * len(p_ids)
    elif loss_on != "all":
        raise ValueError(f"trainer.loss_on must be 'answer' or 'all', got {loss_on!r}")
    return {"input_ids": full, "attention_mask": [1] * len(full), "labels": labels}, truncated, mismatch


def tokenize_examples(tokenizer, examples: list[Example], *, max_length: int, loss_on: str = "answer") -> Tokenized:
    out = Tokenized(rows=[])
    for ex in examples:
        row, truncated, mismatch = tokenize_example(tokenizer, ex.prompt, ex.completion, max_length=max_length,
                                                    loss_on=loss_on)
        out.prefix_mismatch += mismatch
        if row is None:
            out.dropped += 1
            continue
        out.truncated += truncated
        out.rows.append(row)
        out.lengths.append(len(row["input_ids"]))
    if out.dropped or out.truncated:
        log.warning("training data: %d examples dropped (prompt >= max_length %d), %d truncated",
                    out.dropped, max_length, out.truncated)
    return out


class PadCollator:
    """Right-pads a batch of token-id rows: inputs with ``pad_id``, attention 0, labels -100.

    ``pad_to`` pads every batch to a fixed length instead (the fixed-padding baseline of
    ``experiments/bench_train.py``). Counts real and padded tokens it has produced."""

    def __init__(self, pad_id: int, pad_to: int | None = None):
        self.pad_id, self.pad_to = pad_id, pad_to
        self.real_tokens = 0
        self.padded_tokens = 0

    def __call__(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        width = self.pad_to or max(len(r["input_ids"]) for r in rows)
        batch = {"input_ids": [], "attention_mask": [], "labels": []}
        for r in rows:
            pad = width - len(r["input_ids"])
            batch["input_ids"].append(r["input_ids"] + [self.pad_id] * pad)
            batch["attention_mask"].append(r["attention_mask"] + [0] * pad)
            batch["labels"].append(r["labels"] + [IGNORE] * pad)
            self.real_tokens += len(r["input_ids"])
        self.padded_tokens += width * len(rows)
        return {k: torch.tensor(v, dtype=torch.long) for k, v in batch.items()}


def length_grouped_batches(lengths: list[int], batch_size: int, seed: int, *, group: bool = True,
                           mega: int = 50) -> list[list[int]]:
    """Shuffled batches of indices; with ``group``, each window of ``mega`` batches is sorted by length
    (longest first) before being cut into batches, so a batch holds similar lengths (as transformers'
    LengthGroupedSampler). The batch order itself stays random."""
    rng = random.Random(seed)
    idx = list(range(len(lengths)))
    rng.shuffle(idx)
    if group:
        window = batch_size * mega
        idx = [i for s in range(0, len(idx), window)
               for i in sorted(idx[s:s + window], key=lambda i: -lengths[i])]
    batches = [idx[s:s + batch_size] for s in range(0, len(idx), batch_size)]
    if group:
        rng.shuffle(batches)
    return batches


class RankBatches:
    """One process's share of each global batch, for ``batch_sampler=`` of a DataLoader (``trainer=sft``).

    The global batches are ``length_grouped_batches(lengths, batch_size, seed + epoch)``: a pure function
    of the seed and the epoch (``set_epoch``), so they are the same for any number of processes, on every
    rank, and after a resume. Each is cut into ``world`` contiguous shares of near-equal size and rank
    ``rank`` yields its share. A share left empty (a last batch with fewer rows than processes) holds the
    batch's first row with every label masked (index ``-1 - i``, see ``MaskableRows``): the rank still runs
    its forward and backward pass, which DDP needs, and adds no loss and no target token."""

    def __init__(self, lengths: list[int], batch_size: int, seed: int, *, group: bool = True, rank: int = 0,
                 world: int = 1):
        # not ``self.batch_size``: accelerate would take it for the size of every yielded share
        self.lengths, self.global_batch, self.seed, self.group = lengths, batch_size, seed, group
        self.rank, self.world = rank, world
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return math.ceil(len(self.lengths) / self.global_batch)

    def __iter__(self):
        for batch in length_grouped_batches(self.lengths, self.global_batch, self.seed + self.epoch, group=self.group):
            n = len(batch)
            yield batch[self.rank * n // self.world:(self.rank + 1) * n // self.world] or [-1 - batch[0]]


class MaskableRows:
    """Training rows by index; index ``-1 - i`` is row ``i`` with every label masked (``RankBatches``)."""

    def __init__(self, rows: list[dict]):
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict:
        if i >= 0:
            return self.rows[i]
        row = self.rows[-1 - i]
        return {**row, "labels": [IGNORE] * len(row["labels"])}
