# my_components.py
"""A filter and a trainer defined outside sert."""
from sert.training.loop import LoopTrainer


class MaxLengthFilter:
    """Drops latent paths longer than ``max_tokens`` model tokens (rambling paths)."""

    def __init__(self, max_tokens: int = 120):
        self.max_tokens = max_tokens

    def check(self, cand: dict) -> str | None:
        """None keeps the candidate; a reason drops it (rejected.jsonl `reason`, the funnel counts it)."""
        n = cand["num_tokens"]
        return f"max_length: {n} > {self.max_tokens} tokens" if n > self.max_tokens else None


class FrozenEmbeddingsTrainer(LoopTrainer):
    """The plain torch loop (trainer=loop) with the token embeddings frozen."""

    def train(self, model, tokenizer, examples, out_dir, *, seed=42):
        frozen = model.get_input_embeddings().weight
        frozen.requires_grad_(False)
        summary = super().train(model, tokenizer, examples, out_dir, seed=seed)
        return {**summary, "frozen_parameters": frozen.numel()}  # -> train_summary.json, run.json
