#!/usr/bin/env bash
# The README's main job on the built-in synthetic dataset: synthesise, extract the weights-free
# targets, verify the cache, summarise it, and draw one clip's targets.
set -euo pipefail
DATA=${DATA:-data/synthetic}
CACHE=${CACHE:-cache}
mvmtargets synth "$DATA" --clips "${CLIPS:-64}" --seed 0
mvmtargets extract "$DATA/captions.csv" --target pixel --target hog --target hog:maskfeat --target flow:dis \
  --out "$CACHE" --workers 2
mvmtargets verify --cache "$CACHE" --dataset synthetic
mvmtargets info --cache "$CACHE" --dataset synthetic
mvmtargets show videos/clip_00000 --target hog --cache "$CACHE" --dataset synthetic --out "$CACHE/show_hog.png"
mvmtargets show videos/clip_00000 --target flow --cache "$CACHE" --dataset synthetic --out "$CACHE/show_flow.png"
