"""Loading causal LMs and tokenizers: hub names, local dirs, GGUF files, and tiny random GPT-2s."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from sert.confdir import package_dir  # noqa: F401 - the resolver sert.pkg_dir; re-exported
from sert.hardware import DTYPES

log = logging.getLogger(__name__)


def resolve_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def byte_tokenizer():
    """A 257-token byte-level tokenizer (256 bytes + <|endoftext|>) built in code: needs no files."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {ch: i for i, ch in enumerate(sorted(alphabet))}
    vocab["<|endoftext|>"] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|endoftext|>", bos_token="<|endoftext|>", unk_token="<|endoftext|>"
    )


def looks_like_path(ref: str) -> bool:
    """A reference that can only mean a local file or directory: a Hub id is ``name`` or ``org/name``."""
    return ref.startswith(("/", ".", "~")) or ref.count("/") > 1 or "\\" in ref or ref.endswith(".gguf")


def check_local(ref: str, what: str, gguf_file: str | None = None) -> None:
    """A path-like reference that does not exist is reported as a missing path, not as a bad Hub id."""
    path = Path(ref).expanduser()
    if looks_like_path(ref) and not path.exists():
        raise FileNotFoundError(f"{what} {ref!r}: no such local file or directory (a path, so the Hugging Face "
                                "Hub was not asked)")
    if gguf_file and path.is_dir() and not (path / gguf_file).is_file():
        raise FileNotFoundError(f"{what} {ref!r}: no GGUF file {gguf_file!r} in that directory")


def load_tokenizer(name_or_path: str, *, gguf_file: str | None = None, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    check_local(name_or_path, "tokenizer", gguf_file)

    kwargs: dict[str, Any] = {"trust_remote_code": trust_remote_code}
    if gguf_file:
        kwargs["gguf_file"] = gguf_file
    tok = AutoTokenizer.from_pretrained(name_or_path, **kwargs)
    return prepare_tokenizer(tok)


def tokenizer_for(spec: dict):
    """The tokenizer ``load_model(**spec)`` would use, without loading any weights."""
    trust = bool(spec.get("trust_remote_code"))
    if spec.get("tokenizer"):
        return load_tokenizer(spec["tokenizer"], trust_remote_code=trust)
    if spec.get("random_init") is not None:
        return prepare_tokenizer(byte_tokenizer())
    return load_tokenizer(spec["name_or_path"], gguf_file=spec.get("gguf_file"), trust_remote_code=trust)


def prepare_tokenizer(tok):
    """GPT-2 has no pad token: pad with EOS (masked out by attention and labels). Left padding so
    batched generation continues right after each prompt."""
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "left"
    return tok


def load_model(
    name_or_path: str,
    *,
    gguf_file: str | None = None,
    tokenizer: str | None = None,
    dtype: str = "float32",
    device: str = "auto",
    trust_remote_code: bool = False,
    random_init: dict | None = None,
    attention: str = "sert",
    **_: Any,
):
    """Return ``(model, tokenizer)`` in eval mode on ``device``.

    ``random_init`` (the ``tiny`` model) builds a randomly initialised GPT-2 of that shape instead of
    loading weights: its tokenizer is ``tokenizer`` if given, else a byte-level one built in code.
    ``attention``: ``sert`` (``sert.attention``: fast one-token decoding steps, SDPA otherwise), or a transformers
    attention implementation (``sdpa``, ``eager``)."""
    from transformers import AutoModelForCausalLM, GPT2Config, GPT2LMHeadModel

    torch_dtype = DTYPES[dtype] if dtype != "auto" else "auto"
    if random_init is not None:
        spec = dict(random_init)
        seed = spec.pop("seed", 0)
        tok = load_tokenizer(tokenizer) if tokenizer else prepare_tokenizer(byte_tokenizer())
        torch.manual_seed(seed)
        config = GPT2Config(vocab_size=len(tok), bos_token_id=tok.eos_token_id, eos_token_id=tok.eos_token_id, **spec)
        model = GPT2LMHeadModel(config)
        if torch_dtype != "auto":
            model = model.to(torch_dtype)
    else:
        check_local(name_or_path, "model", gguf_file)
        log.info("loading model %s%s", name_or_path, f" ({gguf_file})" if gguf_file else "")
        kwargs: dict[str, Any] = {"trust_remote_code": trust_remote_code, "dtype": torch_dtype}
        if gguf_file:
            kwargs["gguf_file"] = gguf_file
        model = AutoModelForCausalLM.from_pretrained(name_or_path, **kwargs)
        if gguf_file:
            drop_quantization(model)
        tok = (
            load_tokenizer(tokenizer, trust_remote_code=trust_remote_code)
            if tokenizer
            else load_tokenizer(name_or_path, gguf_file=gguf_file, trust_remote_code=trust_remote_code)
        )
    set_attention(model, attention)
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tok.pad_token_id
    if getattr(model, "generation_config", None) is not None and model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tok.pad_token_id
    return model.to(resolve_device(device)).eval(), tok


def set_attention(model, attention: str) -> None:
    if attention == "sert":
        from sert import attention as fast_attention

        fast_attention.enable(model)
    elif attention not in ("sdpa", "eager"):
        raise ValueError(f"model.attention must be sert, sdpa or eager, got {attention!r}")
    elif model.config._attn_implementation != attention:
        model.set_attn_implementation(attention)


def drop_quantization(model) -> None:
    """A GGUF-loaded model is dequantised to plain float weights on load but still carries its
    quantizer, which blocks training ("purely quantized models") and ``save_pretrained``: drop it.
    Called on load, before training (``sert.training.base``) and on save; a no-op for other models."""
    if getattr(model.config, "quantization_config", None) is not None:
        del model.config.quantization_config
    for attr, value in (("hf_quantizer", None), ("is_quantized", False), ("quantization_method", None)):
        if attr in vars(model):
            setattr(model, attr, value)


def save_model(model, tokenizer, out_dir: str | Path) -> Path:
    """``save_pretrained`` for model + tokenizer."""
    out_dir = Path(out_dir)
    drop_quantization(model)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir


def weights_identity(spec: dict) -> dict:
    """The loading arguments that name a model's weights (for cache keys): where they come from, not how they
    are computed (dtype, device)."""
    return {k: spec.get(k) for k in ("name_or_path", "gguf_file", "tokenizer", "random_init")}


def model_spec(ref: str) -> dict:
    """``load_model`` keyword arguments for a model *reference*, as ``teacher.model`` / ``judge.model``
    accept it: the name of a ``conf/model/<name>.yaml`` config (e.g. ``smollm2-135m``), a local directory
    or GGUF file, or a Hugging Face Hub id (anything else)."""
    from omegaconf import OmegaConf

    from sert.confdir import CONF_DIR  # also registers the resolvers the model configs use

    config = Path(CONF_DIR) / "model" / f"{ref}.yaml"
    if "/" not in ref and config.exists():
        from sert.config.data import ModelConfig  # the YAML holds overrides only; defaults live here

        node = OmegaConf.merge(OmegaConf.structured(ModelConfig), OmegaConf.load(config))
        node = OmegaConf.to_container(node, resolve=True, enum_to_str=True)
        return {k: v for k, v in node.items() if k != "name"}
    path = Path(ref).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        return {"name_or_path": str(path.parent.resolve()), "gguf_file": path.name}
    if path.exists():
        return {"name_or_path": str(path.resolve())}
    if ref.startswith((".", "/", "~")):
        raise FileNotFoundError(f"model {ref!r}: no such local file or directory")
    return {"name_or_path": ref}
