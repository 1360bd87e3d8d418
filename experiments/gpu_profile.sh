#!/usr/bin/env bash
# Full-size profile (the paper's settings) for a GPU machine: GPT-2 small/medium/large from the Hub,
# datasets from the Hub (or dataset.path=... for local files), GPT-3.5-class teacher through OPENAI_API_KEY,
# Llama-3-8B-Instruct judge behind an OpenAI-compatible server (judge.base_url, default localhost:8000/v1).
#   experiments/gpu_profile.sh [table2|fig4|fig1|fig3|all] [extra hydra overrides...]
# Parallel jobs on one multi-GPU box: add hydra/launcher=joblib hydra.launcher.n_jobs=<GPUs> (pip install -e ".[joblib]");
# on SLURM: hydra/launcher=submitit_slurm hydra.launcher.gpus_per_node=1 hydra.launcher.timeout_min=1440 (".[slurm]").
# Optional: generation.backend=vllm (".[vllm]"), trainer.precision=bf16 on Ampere+.
set -euo pipefail
cd "$(dirname "$0")/.."
what="${1:-table2}"; shift || true
report() { python -m sert.report "$(ls -dt "${SERT_OUTPUT_DIR:-outputs}"/multiruns/*/* | head -1)"; }
run() { local t0=$SECONDS; python -m sert "experiment=$1" device=cuda "${@:2}"; report; echo "[$1] wall ${SECONDS}s" >&2; }
case "$what" in
  table2) run table2 "$@" ;;
  fig4)   run fig4_filter_ablation "$@" ;;
  fig1)   experiments/fig1_sampling.sh full device=cuda "$@" ;;
  fig3)   run fig3_judge "$@" ;;
  all)    run table2 "$@"; run fig3_judge "$@"; run fig4_filter_ablation "$@"; experiments/fig1_sampling.sh full device=cuda "$@" ;;
  *) echo "usage: $0 [table2|fig4|fig1|fig3|all] [overrides...]" >&2; exit 2 ;;
esac
