#!/usr/bin/env bash
# Novel-object captioning on Flickr8k, end to end: the held-out split, training on it, captions with
# and without tag guidance, and the per-object F1 / CIDEr / METEOR tables (README, "Objects Flickr8k
# never showed"). Also the no-loss check: the full-data model with and without guidance.
#
#   bash benchmarks/novel_objects.sh DATA_DIR RUNS_DIR
#   e.g. bash benchmarks/novel_objects.sh ../shared/data/flickr8k runs
# Guidance uses capgen caption's default thresholds (0.5 for known words, 0.35 for novel ones);
# pass others through GUIDE="--guide-threshold P --novel-guide-threshold Q".
#
# Steps already done are skipped (a prepared folder, a cache, a finished run), so a rerun continues.
# Time on the 2-core CPU: extraction ~4 min, training ~1 h (8 epochs), each evaluation 1-2 min.
set -euo pipefail
data=${1:?flickr8k folder}; runs=${2:?output folder}
read -r -a guide <<< "${GUIDE:-}"
threads=${THREADS:-2}
here=$(cd "$(dirname "$0")" && pwd)

[ -f "$runs/flickr8k/manifest.json" ] || capgen prepare "$data" --format flickr --out "$runs/flickr8k"
[ -f "$runs/flickr8k-lite2/meta.json" ] || capgen extract "$runs/flickr8k" --encoder efficientnet-lite2 --out "$runs/flickr8k-lite2"
# 1. the split: training images whose references name a held-out object are removed
[ -f "$runs/flickr8k-heldout/manifest.json" ] || \
    python "$here/novel_objects.py" --data "$runs/flickr8k" --out "$runs/flickr8k-heldout" --features "$runs/flickr8k-lite2"
# 2. the hand-tuned transformer config trained on it (same features: same images)
resume=(); [ -f "$runs/heldout-transformer/last.pt" ] && resume=(--resume)
capgen train --data "$runs/flickr8k-heldout" --features "$runs/flickr8k-lite2" --config "$here/../configs/flickr8k_transformer.yaml" \
    --out "$runs/heldout-transformer" --set epochs=8 --set threads="$threads" "${resume[@]}"
# 3. test captions without and with guidance, and the per-object F1 table of each
for mode in plain guided; do
    extra=(); [ $mode = guided ] && extra=(--guide "${guide[@]}")
    capgen evaluate "$runs/heldout-transformer/best.pt" --data "$runs/flickr8k-heldout" --features "$runs/flickr8k-lite2" \
        --split test --out "$runs/novel-$mode" "${extra[@]}"
    python "$here/novel_objects.py" --data "$runs/flickr8k" --predictions "$runs/novel-$mode/predictions.json" \
        --json "$runs/novel-$mode/f1.json"
done
# 4. no loss in domain: the bundled (full-data) model on the whole test split, without and with guidance
for mode in plain guided; do
    extra=(); [ $mode = guided ] && extra=(--guide "${guide[@]}")
    capgen evaluate "$(python -c 'from capgen.inference.captioner import bundled_model_path as p; print(p())')" \
        --data "$runs/flickr8k" --features "$runs/flickr8k-lite2" --split test --out "$runs/full-$mode" "${extra[@]}"
done
