#!/usr/bin/env bash
# The one-shot batch job of docker/jobs.Dockerfile: synthetic data -> Beam preprocessing ->
# training -> export into /models (the folder tensorflow/serving mounts).
# Settings: CITYSEG_MODEL, CITYSEG_IMAGE_SIZE, CITYSEG_TRAIN_MINUTES (see the Dockerfile).
set -euo pipefail
MODEL="${CITYSEG_MODEL:-fastscnn_s4}"
SIZE="${CITYSEG_IMAGE_SIZE:-256x512}"
MINUTES="${CITYSEG_TRAIN_MINUTES:-10}"

# `docker compose up` runs this before TF Serving on every start: keep what is there.
if [ -z "${CITYSEG_FORCE:-}" ] && compgen -G "/models/$MODEL/[0-9]*/saved_model.pb" > /dev/null; then
    echo "/models/$MODEL already has a version; nothing to do (CITYSEG_FORCE=1 rebuilds)"
    exit 0
fi

cityseg-synth /raw --cities 2 --images-per-city 12 --splits train,val,test --seed 0
cityseg-preprocess --input-root /raw --output-dir /data --image-size "$SIZE"
cityseg-train --data-dir /data --model "$MODEL" --output-dir /tmp/run --time-limit "$MINUTES"
cityseg-export --run-dir /tmp/run --models-dir /models --name "$MODEL"
