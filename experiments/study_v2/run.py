#!/usr/bin/env python
"""Driver of study v2: the CPU study at the scale where small students learn (cells, costs and order in
experiments/study_v2/README.md).

    python experiments/study_v2/run.py list            # cells, estimated cost, done or not
    python experiments/study_v2/run.py next            # run the first unfinished cell
    python experiments/study_v2/run.py sqa_s0_rd ...   # run named cells
    python experiments/study_v2/run.py --dry-run next  # print the commands only

How a cell runs, resumes and is collected: experiments/studylib.py.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import studylib  # noqa: E402
from studylib import Cell, Job  # noqa: E402

SEEDS = [0, 1, 2]
# The teacher: the local Qwen 1.5B (experiments/get_qwen_teacher.sh fetches the GGUF). Replace with --teacher for a
# smoke run. Batch size: speed only, not in the cache key.
TEACHER = ["teacher=local", "teacher.model=qwen2.5-1.5b-instruct-offline", "teacher.batch_size=32"]
SERT_PROMPT = "prompts.generate='Question: {question}. Answer:'"  # the SERT model's training prompt (II-B)
BASE = "smollm2-135m"  # the student before training: Figure 1's common perplexity scorer


def job(name: str, exp: str, stage: str, seed: int) -> Job:
    return Job(name, [f"experiment={exp}", f"stage={stage}", f"seed={seed}"])


def fig1() -> list[Job]:
    """Figure 1's arms: the base model, then the SERT model (sqa_s0_sert's, a cache hit) with the perplexity filter
    scored under itself (as v1) and under the base model (docs/study-design.md: the figure needs the latter)."""
    jobs = [Job(f"base_{mode}", ["experiment=study_v2_fig1", f"generation.mode={mode}", "seed=0"])
            for mode in ("topk_alternatives", "raw")]
    jobs.append(job("sert_model", "study_v2_sqa", "self_train", 0))
    for mode in ("topk_alternatives", "raw"):
        for scorer, extra in (("own", []), ("base", [f"filter.ppl_model={BASE}"])):
            jobs.append(Job(f"sert_{mode}_ppl_{scorer}",
                            lambda d, mode=mode, extra=extra: ["experiment=study_v2_fig1", f"generation.mode={mode}",
                                                               "seed=0", *extra,
                                                               *studylib.sert_checkpoint(d, SERT_PROMPT)]))
    return jobs


def cells() -> list[Cell]:
    """StrategyQA first (README "Cell plan"): the teacher, then one seed of every method, the shared SERT paths
    before the SERT methods, then seeds 1 and 2. Estimates (minutes, idle 2-core AVX512-BF16 machine): README."""
    exp = "study_v2_sqa"
    out = [Cell("teacher_sqa", 60, "teacher rationales, all 1,603 StrategyQA train questions",
                [job("teacher", exp, "teacher", 0)]),
           Cell("sqa_s0_ft", 45, "StrategyQA: the base model zero-shot and Finetune, seed 0",
                [job("base", exp, "evaluate", 0), job("finetune", exp, "finetune", 0)]),
           Cell("sqa_s0_rd", 60, "StrategyQA: RD, seed 0", [job("rd", exp, "rd", 0)]),
           Cell("paths_sqa", 100, "StrategyQA: SERT latent paths (25 per question) and the filter chain, once",
                [job("paths", exp, "filter", 0)]),
           Cell("sqa_s0_sert", 50, "StrategyQA: SERT, seed 0", [job("sert", exp, "sert", 0)]),
           Cell("fig1_sqa", 30, "Figure 1: base and SERT model, top-k alternatives and raw, 100 StrategyQA test "
                "questions; the SERT arms' perplexity under the SERT model and under the base model", fig1()),
           Cell("sqa_s0_sert_rd", 60, "StrategyQA: SERT+RD, seed 0", [job("sert_rd", exp, "sert_rd", 0)])]
    for seed in SEEDS[1:]:
        out += [Cell(f"sqa_s{seed}_a", 85, f"StrategyQA: Finetune and RD, seed {seed}",
                     [job("finetune", exp, "finetune", seed), job("rd", exp, "rd", seed)]),
                Cell(f"sqa_s{seed}_b", 105, f"StrategyQA: SERT and SERT+RD, seed {seed}",
                     [job("sert", exp, "sert", seed), job("sert_rd", exp, "sert_rd", seed)])]
    return out


def main(argv: list[str] | None = None) -> int:
    return studylib.main("study_v2", cells(), TEACHER, __doc__, argv)


if __name__ == "__main__":
    sys.exit(main())
