"""Names and orders of the paper's models, methods and datasets, its Table II numbers, and markdown helpers."""

from __future__ import annotations

MISSING = "—"
# the paper's row order within a model, after the base model with no training
METHODS = ["base", "finetune", "sert", "sert_rd", "rd"]
METHOD_NAMES = {"base": "Base (zero-shot)", "finetune": "Finetune", "sert": "SERT", "sert_rd": "SERT+RD", "rd": "RD"}
MODELS = ["gpt2", "gpt2-medium", "gpt2-large"]
MODEL_NAMES = {"gpt2": "GPT-2", "gpt2-medium": "GPT-2-medium", "gpt2-large": "GPT-2-large"}
DATASETS = ["strategy_qa", "commonsense_qa"]  # the paper's column order
DATASET_NAMES = {"strategy_qa": "StrategyQA", "commonsense_qa": "CommonsenseQA"}
FILTER_ORDER = ["raw", "pattern", "pattern_length", "pattern_length_rep2", "full"]
CRITERIA = ["coherence", "relevance", "logical_consistency", "completeness", "overall"]
METRICS = ["acc", "fmt", "len", "rep"]

# The paper's Table II (Zhang et al. 2025, arXiv 2502.12744, section IV), transcribed from
# ../shared/paper/sert-paper.txt: (model, method, dataset) -> (Acc %, Fmt, Len, Rep); None = "-" there.
# The GPT-3.5 zero-shot-CoT teacher row (SQA 53.45/-/76.77/0.36, CSQA 60.07/-/63.82/0.31) has no method here.
_T2 = {
    ("gpt2", "finetune"): ((54.00, None, None, None), (20.80, None, None, None)),
    ("gpt2", "sert"): ((54.00, 0.91, 145.33, 0.53), (20.72, 0.96, 120.80, 0.50)),
    ("gpt2", "sert_rd"): ((54.65, 0.99, 116.62, 0.50), (21.95, 0.97, 114.30, 0.49)),
    ("gpt2", "rd"): ((52.69, 0.92, 116.23, 0.52), (21.87, 0.91, 167.11, 0.61)),
    ("gpt2-medium", "finetune"): ((50.22, None, None, None), (19.82, None, None, None)),
    ("gpt2-medium", "sert"): ((55.17, 0.89, 149.11, 0.49), (23.10, 0.82, 160.26, 0.56)),
    ("gpt2-medium", "sert_rd"): ((56.34, 1.00, 103.42, 0.49), (25.72, 0.90, 116.34, 0.52)),
    ("gpt2-medium", "rd"): ((52.69, 0.85, 181.06, 0.56), (21.54, 0.66, 257.40, 0.67)),
    ("gpt2-large", "finetune"): ((53.57, None, None, None), (20.88, None, None, None)),
    ("gpt2-large", "sert"): ((55.75, 0.94, 63.06, 0.33), (22.63, 0.99, 77.53, 0.46)),
    ("gpt2-large", "sert_rd"): ((57.21, 0.97, 80.28, 0.47), (26.03, 1.00, 94.18, 0.47)),
    ("gpt2-large", "rd"): ((50.22, 0.79, 90.48, 0.51), (22.93, 0.93, 96.15, 0.51)),
}
PAPER_TABLE2: dict[tuple[str, str, str], tuple] = {
    (m, meth, ds): vals[i] for (m, meth), vals in _T2.items() for i, ds in enumerate(DATASETS)
}
PAPER_TEACHER = {"strategy_qa": (53.45, None, 76.77, 0.36), "commonsense_qa": (60.07, None, 63.82, 0.31)}  # GPT-3.5


def model_name(m: str) -> str:
    return MODEL_NAMES.get(m, m)


def dataset_name(ds: str) -> str:
    return DATASET_NAMES.get(ds, ds)


def method_name(method: str) -> str:
    return METHOD_NAMES.get(method, method)


def ordered(values: set[str], order: list[str]) -> list[str]:
    """``values`` in ``order``, then the unknown ones sorted."""
    return [v for v in order if v in values] + sorted(values - set(order))


def rank_in(value: str | None, order: list[str]) -> int:
    """Sort key: the position in ``order``, unknown values last."""
    return order.index(value) if value in order else len(order)


def paper_cell(model: str, method: str, dataset: str) -> str:
    ref = PAPER_TABLE2.get((model, method, dataset))
    if ref is None:
        return MISSING
    return " / ".join(MISSING if v is None else f"{v:.2f}" for v in ref)


class MdTable(str):
    """A markdown table (a ``str``) that keeps its header and rows, for ``wandb.Table``."""

    header: list[str]
    rows: list[list[str]]

    def __new__(cls, header: list[str], rows: list[list[str]]) -> MdTable:
        lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
        lines += ["| " + " | ".join(r) + " |" for r in rows]
        table = super().__new__(cls, "\n".join(lines))
        table.header, table.rows = list(header), [list(r) for r in rows]
        return table


def md_table(header: list[str], rows: list[list[str]]) -> MdTable:
    return MdTable(header, rows)
