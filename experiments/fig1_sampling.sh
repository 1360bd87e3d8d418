#!/usr/bin/env bash
# Figure 1, all three arms in one sweep directory:
#   1. top-k alternative tokens and 2. raw sampling of the base model   (experiment=fig1_sampling[_cpu])
#   3. raw sampling of the SERT-activated model: train it (stage=sert, cached if Table II ran), then
#      generate raw samples from its checkpoint and judge them.
#   experiments/fig1_sampling.sh [cpu|full] [extra hydra overrides...]        then: sert-report <sweep dir>
set -euo pipefail
cd "$(dirname "$0")/.."
profile="${1:-cpu}"; shift || true
exp=fig1_sampling; [ "$profile" = cpu ] && exp=fig1_sampling_cpu
out="${SERT_OUTPUT_DIR:-outputs}"
sweep="$out/multiruns/fig1-$(date +%Y-%m-%d_%H-%M-%S)"
judge=()
if [ "$profile" = cpu ]; then
  # judge=hf with judge.model=null judges with the run's model, which arm 3 replaces by the SERT checkpoint:
  # pin the judge to the base SmolLM2-135M-Instruct (saved once as a plain HF directory) for all three arms.
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
  judge=("judge.model=$(readlink -f "$jdir")")
fi
python -m sert "experiment=$exp" "hydra.sweep.dir=$sweep" "${judge[@]}" "$@"
# the SERT-activated model: same model/data/generation settings as the experiment, stage=sert
python -m sert "experiment=$exp" stage=sert hydra.mode=RUN "hydra.run.dir=$sweep/sert_model" "$@"
ckpt="$(readlink -f "$sweep/sert_model/self_train")/model"
[ -d "$ckpt" ] || { echo "no self-trained checkpoint at $ckpt" >&2; exit 1; }
base="$(python -c "import json,sys; print(json.load(open(sys.argv[1]))['choices']['model'])" "$sweep/sert_model/run.json")"
python -m sert "experiment=$exp" generation.mode=raw hydra.mode=RUN "hydra.run.dir=$sweep/sert_raw" \
  "model.name=${base}-sert" "model.name_or_path=$ckpt" model.gguf_file=null model.random_init=null "${judge[@]}" "$@"
python -m sert.report "$sweep"
