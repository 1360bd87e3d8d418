#!/usr/bin/env bash
# Figure 1 on held-out (test-split) questions, every arm in one sweep directory:
#   1-2. the base model: top-k alternative first tokens, raw sampling       (experiment=fig1_sampling [profile=cpu])
#   3-4. the SERT model: trained on the TRAIN split (stage=sert, cached if Table II ran), then sampled on the
#        same test questions from its checkpoint with its training prompt "Question: {q}. Answer:", both modes.
# Each arm: generate -> filter (whole chain) -> judge every candidate. Then sert-report <sweep dir>.
#   experiments/fig1_sampling.sh [cpu|full] [extra hydra overrides...]
# Environment: TRAIN_LIMIT (train questions of the SERT model; default: the experiment's dataset.limit),
#              SKIP_JUDGE=1 (filter only: Figure 1 from the filter chain, no judge).
set -euo pipefail
cd "$(dirname "$0")/.."
profile="${1:-cpu}"; shift || true
exp=(experiment=fig1_sampling); [ "$profile" = cpu ] && exp+=(profile=cpu)
out="${SERT_OUTPUT_DIR:-outputs}"
sweep="${FIG1_SWEEP_DIR:-$out/multiruns/fig1-$(date +%Y-%m-%d_%H-%M-%S)}"
extra=()
[ "${SKIP_JUDGE:-0}" = 1 ] && extra+=("stage.extra_steps=[]")
if [ "$profile" = cpu ] && [ "${SKIP_JUDGE:-0}" != 1 ]; then
  # judge=hf with judge.model=null judges with the run's model, which arms 3-4 replace by the SERT checkpoint:
  # pin the judge to the base SmolLM2-135M-Instruct (saved once as a plain HF directory) for every arm.
  jdir="$out/judge_models/smollm2-135m-instruct"
  [ -f "$jdir/config.json" ] || python - "$jdir" <<'PY'
import sys
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from sert.cli import CONF_DIR
from sert.models import load_model, save_model
with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
    m = OmegaConf.to_container(compose(config_name="config", overrides=["model=smollm2-135m"]).model, resolve=True, enum_to_str=True)
save_model(*load_model(**m, device="cpu"), sys.argv[1])
PY
  extra+=("judge.model=$(readlink -f "$jdir")")
fi
python -m sert "${exp[@]}" "hydra.sweep.dir=$sweep" "${extra[@]}" "$@"
# the SERT model: trained on the train split (the experiment's split is test)
train=(dataset.split=train)
[ -n "${TRAIN_LIMIT:-}" ] && train+=("dataset.limit=$TRAIN_LIMIT")
python -m sert "${exp[@]}" stage=sert stage.extra_steps=[] hydra.mode=RUN "hydra.run.dir=$sweep/sert_model" \
  "${train[@]}" "$@"
ckpt="$(readlink -f "$sweep/sert_model/self_train")/model"
[ -d "$ckpt" ] || { echo "no self-trained checkpoint at $ckpt" >&2; exit 1; }
base="$(python -c "import json,sys; print(json.load(open(sys.argv[1]))['choices']['model'])" "$sweep/sert_model/run.json")"
for mode in topk_alternatives raw; do
  python -m sert "${exp[@]}" "generation.mode=$mode" hydra.mode=RUN "hydra.run.dir=$sweep/sert_$mode" \
    "model.name=${base}-sert" "model.name_or_path=$ckpt" model.gguf_file=null model.tokenizer=null \
    model.random_init=null "prompts.generate='Question: {question}. Answer:'" "${extra[@]}" "$@"
done
python -m sert.report "$sweep"
