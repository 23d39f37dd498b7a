#!/usr/bin/env bash
# `make demo`: the whole chain on synthetic data.
#   synth -> preprocess (Beam) -> train briefly -> export (SavedModel) -> cityseg-serve (gRPC+REST)
#   -> cityseg-proxy (Flask) -> one image id's segmentation.
# Leaves the services running until Ctrl-C; with DEMO_EXIT=1 it stops them and exits 0 once the
# request has succeeded (non-zero if any step failed).
set -euo pipefail

OUT=${1:-demo-out}
MODEL=${DEMO_MODEL:-fastscnn_s4}
TRAIN_MINUTES=${DEMO_TRAIN_MINUTES:-2}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
RAW=$OUT/raw DATA=$OUT/data RUN=$OUT/run MODELS=$OUT/models LOGS=$OUT/logs
mkdir -p "$LOGS"

step() { printf '\n== [%s] %s\n' "$(date +%H:%M:%S)" "$*"; }
free_port() { python3 - "$1" <<'PY'
import socket, sys
want = int(sys.argv[1])
for port in [want] + [0]:
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", port))
    except OSError:
        s.close(); continue
    print(s.getsockname()[1]); s.close(); break
PY
}

PIDS=()
cleanup() {
    for pid in "${PIDS[@]:-}"; do
        [ -n "$pid" ] && kill "$pid" 2>/dev/null || true
    done
    wait 2>/dev/null || true
}
trap cleanup EXIT
trap 'exit 130' INT TERM

wait_http() {  # url timeout_s
    local url=$1 deadline=$((SECONDS + $2))
    until curl -fsS -o /dev/null "$url" 2>/dev/null; do
        if [ $SECONDS -ge $deadline ]; then echo "timed out waiting for $url" >&2; return 1; fi
        sleep 1
    done
}

START=$SECONDS
step "1/6 synthetic Cityscapes -> $RAW"
# 96 training scenes: a couple of minutes of training on 2 cores learns them far better than
# a handful would (see docs/REPORT.md); a few val and test scenes to look at.
cityseg-synth "$RAW" --cities 4 --images-per-city 24 --splits train --seed 0
cityseg-synth "$RAW" --cities 2 --images-per-city 6 --splits val,test --seed 0

step "2/6 Beam preprocessing -> $DATA"
cityseg-preprocess --input-root "$RAW" --output-dir "$DATA" --image-size 256x512

step "3/6 training $MODEL for at most $TRAIN_MINUTES min -> $RUN"
rm -rf "$RUN"
# Frames keep their size and aspect (crops for training, whole frames for validation). No
# augmentation: in a two-minute run it slows learning more than it helps generalise.
cityseg-train --data-dir "$DATA" --model "$MODEL" --output-dir "$RUN" \
    --batch-size 4 --time-limit "$TRAIN_MINUTES" --no-augment

step "4/6 export SavedModel -> $MODELS/$MODEL"
rm -rf "$MODELS/$MODEL"
cityseg-export --run-dir "$RUN" --models-dir "$MODELS" --name "$MODEL"

GRPC_PORT=$(free_port "${DEMO_GRPC_PORT:-8500}")
REST_PORT=$(free_port "${DEMO_REST_PORT:-8501}")
PROXY_PORT=$(free_port "${DEMO_PROXY_PORT:-5000}")

step "5/6 cityseg-serve on gRPC :$GRPC_PORT and REST :$REST_PORT"
cityseg-serve --models-dir "$MODELS" --grpc-port "$GRPC_PORT" --rest-port "$REST_PORT" \
    > "$LOGS/serve.log" 2>&1 &
PIDS+=($!)
wait_http "http://127.0.0.1:$REST_PORT/v1/models/$MODEL" 120 || { tail -20 "$LOGS/serve.log"; exit 1; }

step "6/6 cityseg-proxy on :$PROXY_PORT"
cityseg-proxy --data-dir "$DATA" --raw-root "$RAW" --serving "127.0.0.1:$GRPC_PORT" \
    --model "$MODEL" --port "$PROXY_PORT" > "$LOGS/proxy.log" 2>&1 &
PIDS+=($!)
wait_http "http://127.0.0.1:$PROXY_PORT/readyz" 120 || { tail -20 "$LOGS/proxy.log"; exit 1; }

IMAGE_ID=$(python3 -c "import json,sys; print(next(json.loads(l)['image_id'] for l in open(sys.argv[1]) if json.loads(l)['split']=='val'))" "$DATA/manifest.jsonl")
URL="http://127.0.0.1:$PROXY_PORT/api/v1/images/$IMAGE_ID/segmentation"
step "request: GET $URL"
curl -fsS "$URL" -o "$OUT/segmentation.json"
python3 - "$OUT/segmentation.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
m = r["metrics"]
print(f"image {r['image_id']} ({r['split']}, {r['width']}x{r['height']}) "
      f"model {r['model']['name']} v{r['model']['version']}")
print(f"  pixel accuracy {m['pixel_accuracy']:.3f}  mean IoU {m['mean_iou']:.3f}")
print(f"  prediction PNG {len(r['prediction'])} b64 chars, ground truth PNG {len(r['ground_truth'])} b64 chars")
PY

cat <<MSG

Demo chain done in $((SECONDS - START)) s. Services:
  segmentation API : $URL
  web page         : http://127.0.0.1:$PROXY_PORT/
  TF Serving REST  : http://127.0.0.1:$REST_PORT/v1/models/$MODEL
  TF Serving gRPC  : 127.0.0.1:$GRPC_PORT
  outputs          : $OUT (raw/, data/, run/, models/, logs/)
MSG

if [ "${DEMO_EXIT:-0}" = "1" ]; then
    echo "DEMO_EXIT=1: stopping the services."
    exit 0
fi
echo "Press Ctrl-C to stop the services."
wait
