#!/usr/bin/env bash
# The real-photo development data the benchmarks on real photos read (not part of the project):
#
#     bash benchmarks/camvid_data.sh ../shared/data/camvid-dev /work/data
#
# writes OUT/camvid (CamVid train -> train, val -> val) and OUT/camvid-heldout (a whole
# sequence held out: train on camvida + camvidc of CamVid train, score camvidb), each a
# `cityseg-preprocess --image-size native` output; OUT/raw holds the raw Cityscapes tree that
# camvid-dev's make-tree writes. Run it with the project's virtualenv on PATH (`make venv`).
set -euo pipefail
if [ $# -ne 2 ]; then
  echo "usage: bash benchmarks/camvid_data.sh CAMVID_DEV OUT" >&2
  exit 2
fi
src=$1 out=$2
[ -x "$src/make-tree" ] || { echo "camvid_data: $src has no make-tree (expected ../shared/data/camvid-dev)" >&2; exit 2; }
raw=$out/raw held=$out/raw-heldout
python "$src/make-tree" "$raw"
cityseg-preprocess --input-root "$raw" --output-dir "$out/camvid" --splits train,val \
  --image-size native
# The held-out tree: links into the raw tree, camvidb moved from train to val.
rm -rf "$held"
for kind in leftImg8bit gtFine; do
  mkdir -p "$held/$kind/train" "$held/$kind/val"
  ln -s "$(realpath "$raw/$kind/train/camvida")" "$held/$kind/train/camvida"
  ln -s "$(realpath "$raw/$kind/train/camvidc")" "$held/$kind/train/camvidc"
  ln -s "$(realpath "$raw/$kind/train/camvidb")" "$held/$kind/val/camvidb"
done
cityseg-preprocess --input-root "$held" --output-dir "$out/camvid-heldout" --splits train,val \
  --image-size native
