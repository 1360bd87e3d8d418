"""Dataset, model and paths configs (groups ``dataset``, ``model``; section ``paths``)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from enum import Enum
from typing import Any, Dict, Optional

from omegaconf import MISSING


class OnError(str, Enum):
    skip = "skip"  # report and count the malformed row, go on
    fail = "fail"  # stop the run at the first malformed row


class Verify(str, Enum):
    fast = "fast"  # a cache hit checks every file's size and the sha256 of files up to 64 MiB
    full = "full"  # ... and the sha256 of every file (the model weights too)


class DType(str, Enum):
    float32 = "float32"
    bfloat16 = "bfloat16"
    float16 = "float16"
    auto = "auto"


@dataclass
class DatasetConfig:
    """A QA dataset (paper III-B); ``conf/dataset/<name>.yaml`` names it and its hub location."""

    name: str = MISSING
    hub_id: Optional[str] = None
    hub_config: Optional[str] = None
    hub_splits: Dict[str, str] = field(default_factory=lambda: {"train": "train", "test": "test"})
    path: Optional[str] = None  # local unified .json or .jsonl; null = Hugging Face Hub
    split_file: Optional[str] = None  # {"train": [idx], "test": [idx]} for unified .json files
    split: str = "train"  # the split the training-side stages use
    limit: Optional[int] = None  # first N rows of the split
    on_error: OnError = OnError.skip  # skip (report + count) | fail


@dataclass
class ModelConfig:
    """The student model (paper III-A: GPT-2 124M/355M/774M); ``conf/model/<name>.yaml`` names one."""

    name: str = MISSING  # short name used in run names and W&B tags
    name_or_path: str = MISSING  # hub id or local directory
    gguf_file: Optional[str] = None
    tokenizer: Optional[str] = None  # separate tokenizer path (default: name_or_path)
    dtype: DType = DType.float32  # the paper trained on a V100 in fp32; bfloat16 on GPUs that support it
    trust_remote_code: bool = False
    random_init: Optional[Dict[str, int]] = None  # tiny test models: a GPT2Config shape, no weights
    # sert: one-token decoding steps attend with grouped fp32 matmuls (sert.attention; ~6x faster than SDPA on
    # CPU), SDPA for prefill and training | sdpa | eager: transformers' own
    attention: str = "sert"

    def load_kwargs(self) -> Dict[str, Any]:
        """``sert.models.load_model`` keyword arguments (dtype as its name)."""
        return {**asdict(self), "dtype": DType(self.dtype).value}


@dataclass
class PathsConfig:
    output_dir: str = "outputs"  # runs under <output_dir>/runs, sweeps under /multiruns
    cache_dir: str = "outputs/cache"  # content-addressed stage cache: <cache_dir>/<step>/<key>/
    shared_dir: str = "../shared"  # real data + tokenizer (see README)
    verify: Verify = Verify.fast  # what a cache hit checks against COMPLETE.json before serving (docs/reliability.md)
