#!/usr/bin/env bash
# DeGRPO (`python -m train rl`) on a Cloud TPU VM pod slice: every worker runs the same command,
# JAX's own runtime joins them (distributed.initialize=yes), checkpoints, metrics and the final
# export go to a gs:// run directory.
#
#   TPU_NAME=thinkless-rl ZONE=us-east5-a ACCELERATOR=v5p-32 \
#   RUN_DIR=gs://BUCKET/runs/thinkless_rl_1p5b \
#   SFT_EXPORT=gs://BUCKET/runs/thinkless_sft_1p5b/hf RL_DATA=gs://BUCKET/data/thinkless_rl.jsonl \
#     train/launch_tpu_pod.sh create setup run [key=value ...]
#
# Steps, in the order given:
#   create  make the TPU VM slice (nothing if it exists)
#   setup   copy this checkout (git HEAD) to every worker and pip install it with jax[tpu], gcsfs
#   run     on every worker, in the background: copy the SFT export and the RL records from
#           gs:// to local disk, then python -m train rl --config $CONFIG plus the key=value
#           overrides given after the steps (e.g. rollout.slots=256)
#   logs    follow worker 0's log (the only one that prints progress)
#   delete  delete the slice
# A run restarted with `run` resumes from the latest checkpoint in RUN_DIR. DRY_RUN=1 prints the
# gcloud commands instead of running them.
set -euo pipefail

: "${TPU_NAME:?set TPU_NAME (the name of the slice)}"
: "${ZONE:?set ZONE (e.g. us-east5-a)}"
ACCELERATOR=${ACCELERATOR:-v5p-32}
RUNTIME=${RUNTIME:-v2-alpha-tpuv5}  # the TPU VM image; v5e slices: v2-alpha-tpuv5-lite
CONFIG=${CONFIG:-configs/rl_thinkless_1p5b.yaml}
PYTHON=${PYTHON:-python3.11}  # jaxthink needs Python >= 3.11
TPU=(${DRY_RUN:+echo} gcloud compute tpus tpu-vm)
WHERE=(--zone "$ZONE" ${PROJECT:+--project "$PROJECT"})

on_all_workers() {
  "${TPU[@]}" ssh "$TPU_NAME" "${WHERE[@]}" --worker=all --command "$1"
}

create() {
  "${TPU[@]}" describe "$TPU_NAME" "${WHERE[@]}" >/dev/null 2>&1 ||
    "${TPU[@]}" create "$TPU_NAME" "${WHERE[@]}" --accelerator-type "$ACCELERATOR" \
      --version "$RUNTIME"
}

setup() {
  local archive
  archive=$(mktemp --suffix=.tar.gz)
  git -C "$(dirname "$0")/.." archive --format=tar.gz -o "$archive" HEAD
  "${TPU[@]}" scp "$archive" "$TPU_NAME:jaxthink.tar.gz" "${WHERE[@]}" --worker=all
  rm -f "$archive"
  on_all_workers "set -e
    command -v $PYTHON >/dev/null || (sudo apt-get update -q && sudo apt-get install -yq $PYTHON $PYTHON-venv)
    rm -rf ~/jaxthink && mkdir ~/jaxthink && tar xzf ~/jaxthink.tar.gz -C ~/jaxthink
    $PYTHON -m venv ~/venv
    ~/venv/bin/pip install -q -e ~/jaxthink 'jax[tpu]==0.10.2' gcsfs==2026.10.1"
}

run() {
  : "${RUN_DIR:?set RUN_DIR (gs://BUCKET/...)}"
  : "${SFT_EXPORT:?set SFT_EXPORT (gs:// directory of the SFT warm-up export)}"
  : "${RL_DATA:?set RL_DATA (gs:// JSONL/Parquet of {prompt, answer} records)}"
  local data="\$HOME/rl_data.${RL_DATA##*.}"
  on_all_workers "set -e
    mkdir -p ~/sft_hf && gcloud storage rsync -r $SFT_EXPORT ~/sft_hf
    gcloud storage cp $RL_DATA $data
    cd ~/jaxthink && nohup ~/venv/bin/python -m train rl --config $CONFIG \
      distributed.initialize=yes run_dir=$RUN_DIR model.checkpoint=\$HOME/sft_hf \
      data.path=$data $* < /dev/null > ~/train.log 2>&1 &"
}

logs() {
  "${TPU[@]}" ssh "$TPU_NAME" "${WHERE[@]}" --worker=0 --command "tail -f ~/train.log"
}

delete() {
  "${TPU[@]}" delete "$TPU_NAME" "${WHERE[@]}" --quiet
}

steps=()
while [[ $# -gt 0 && "$1" != *=* ]]; do
  case "$1" in
    create | setup | run | logs | delete) steps+=("$1") ;;
    *) echo "unknown step '$1'; accepted: create, setup, run, logs, delete" >&2 && exit 2 ;;
  esac
  shift
done
[[ ${#steps[@]} -gt 0 ]] || { echo "give one or more steps: create, setup, run, logs, delete" >&2; exit 2; }
for step in "${steps[@]}"; do
  if [[ $step == run ]]; then run "$@"; else "$step"; fi
done
