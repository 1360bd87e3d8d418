#!/usr/bin/env python
"""Driver of the CPU study (v1: too small to test the paper; cells, costs and order in experiments/cpu_study/README.md).

    python experiments/cpu_study/run.py list            # cells, estimated cost, done or not
    python experiments/cpu_study/run.py next            # run the first unfinished cell
    python experiments/cpu_study/run.py sqa_s0 ...      # run named cells
    python experiments/cpu_study/run.py --dry-run next  # print the commands only

How a cell runs, resumes and is collected: experiments/studylib.py.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import studylib  # noqa: E402
from studylib import Cell, Job  # noqa: E402

SEEDS = [0, 1, 2]
METHODS = ["finetune", "sert", "rd", "sert_rd"]
# The teacher: the local Qwen 1.5B (teacher=local and the offline model config come from the teacher branch;
# experiments/get_qwen_teacher.sh fetches the GGUF). Replace with --teacher for a smoke run.
TEACHER = ["teacher=local", "teacher.model=qwen2.5-1.5b-instruct-offline",
           "teacher.batch_size=32"]  # batch size: speed only, not in the cache key
SERT_PROMPT = "prompts.generate='Question: {question}. Answer:'"  # the SERT model's training prompt (II-B)


def cells() -> list[Cell]:
    """The study's cells in run order: teachers first (RD needs them), then one seed of every method and both
    figures (a partial study already has every comparison once), then the other seeds."""
    out = [Cell("teacher_sqa", 45, "teacher rationales, 200 StrategyQA train questions",
                [Job("teacher", ["experiment=cpu_study_sqa", "stage=teacher"])]),
           Cell("teacher_csqa", 25, "teacher rationales, 120 CommonsenseQA train questions",
                [Job("teacher", ["experiment=cpu_study_csqa", "stage=teacher"])])]

    def seed_cell(ds: str, seed: int) -> Cell:
        exp, minutes = {"sqa": ("cpu_study_sqa", 72), "csqa": ("cpu_study_csqa", 40)}[ds]
        name = {"sqa": "StrategyQA (200 train / 687 test)", "csqa": "CommonsenseQA (120 train / 250 test)"}[ds]
        return Cell(f"{ds}_s{seed}", minutes, f"Finetune, SERT, RD, SERT+RD on {name}, seed {seed}",
                    [Job(m, [f"experiment={exp}", f"stage={m}", f"seed={seed}"]) for m in METHODS])

    fig1 = [Job(f"base_{mode}", ["experiment=cpu_study_fig1", f"generation.mode={mode}", "seed=0"])
            for mode in ("topk_alternatives", "raw")]
    fig1.append(Job("sert_model", ["experiment=cpu_study_csqa", "stage=self_train", "seed=0"]))  # csqa_s0's cache
    fig1 += [Job(f"sert_{mode}", lambda d, mode=mode: ["experiment=cpu_study_fig1", f"generation.mode={mode}", "seed=0",
                                                       *studylib.sert_checkpoint(d, SERT_PROMPT)])
             for mode in ("topk_alternatives", "raw")]
    out += [seed_cell("sqa", 0), seed_cell("csqa", 0),
            Cell("fig1", 30, "Figure 1: base and SERT model, top-k alternatives and raw, 100 test questions", fig1),
            Cell("fig4", 85, "Figure 4: 5 filter presets on 30 questions, judged by the local Qwen 1.5B",
                 [Job(f"filter_{p}", ["experiment=cpu_study_fig4", f"filter={p}", "seed=0"])
                  for p in ("raw", "pattern", "pattern_length", "pattern_length_rep2", "full")])]
    out += [seed_cell(ds, seed) for seed in SEEDS[1:] for ds in ("sqa", "csqa")]
    return out


def main(argv: list[str] | None = None) -> int:
    return studylib.main("cpu_study", cells(), TEACHER, __doc__, argv)


if __name__ == "__main__":
    sys.exit(main())
