#!/usr/bin/env bash
# Reproduces the shipped model loopline/models/defects.{pt,onnx} (see loopline/models/README.md).
# Usage: scripts/train_defects.sh [WORK_DIR]   (default /work; needs `make test`'s .venv)
#
# Two runs, the second warm-started from the first:
#   defects-n320  (scripts/train_defects.sh stage1): 2 h from scratch on 320 px synthetic crops.
#   defects-n512  (default): fine-tuning at imgsz 512 on whole 512x512 synthetic frames with the
#                 presets' own ranges, plus the FIRST halves (in time) of the two real sets; their
#                 second halves are the real test sets of the model card.
# Wall time on 2 CPU cores: data ~2 min, each training run 2 h (time-boxed), export 10 s.
set -euo pipefail
W=${1:-/work}
STAGE=${2:-stage2}
L=${LOOPLINE:-.venv/bin/loopline}
PY=${PYTHON:-.venv/bin/python}
REAL=${REAL:-../shared/data/real}
mkdir -p "$W/runs"

if [ "$STAGE" = stage1 ]; then
D=$W/data
mkdir -p "$D"
S="--set width=320 --set height=320 --jobs 2"
# 320x320 crops at the native pixel scale of 512x512 frames.
$L synth --preset M2    --count 1000 --seed 101 --out "$D/train_M2"    $S --set pileups=1,3 --set slip_width=40,160
$L synth --preset M1    --count 300  --seed 102 --out "$D/train_M1"    $S
$L synth --preset loops --count 400  --seed 103 --out "$D/train_loops" $S --set loops=4,14
$L synth --preset mixed --count 300  --seed 104 --out "$D/train_mixed" $S --set pileups=1,3 --set slip_width=40,160 --set loops=2,8
$L synth --preset M2    --count 80   --seed 201 --out "$D/val_M2"      $S --set pileups=1,3 --set slip_width=40,160
$L synth --preset loops --count 40   --seed 203 --out "$D/val_loops"   $S --set loops=4,14
$L synth --preset mixed --count 40   --seed 204 --out "$D/val_mixed"   $S --set pileups=1,3 --set slip_width=40,160 --set loops=2,8
cat > "$D/defects.yaml" <<YAML
path: $D
train: [train_M2/images, train_M1/images, train_loops/images, train_mixed/images]
val: [val_M2/images, val_loops/images, val_mixed/images]
names:
  0: dislocation
  1: loop
YAML
$L train --data "$D/defects.yaml" --out "$W/runs" --name defects-n320 --arch yolov8n-seg \
  --imgsz 320 --batch 16 --seed 0 --hours 2.0 --epochs 60 --workers 2
exit 0
fi

# stage 2: whole 512x512 frames, presets' ranges (the test sets use seeds 9001 and 9003).
D=$W/data512
mkdir -p "$D"
S="--jobs 2"
$L synth --preset M2    --count 600 --seed 301 --out "$D/train_M2"    $S
$L synth --preset M1    --count 200 --seed 302 --out "$D/train_M1"    $S
$L synth --preset loops --count 250 --seed 303 --out "$D/train_loops" $S
$L synth --preset mixed --count 200 --seed 304 --out "$D/train_mixed" $S
$L synth --preset M2    --count 40  --seed 401 --out "$D/val_M2"      $S
$L synth --preset loops --count 20  --seed 403 --out "$D/val_loops"   $S
# Real frames: first 32 of the 63 tanaka frames (time order) and loops frames 1-8 of creme for
# training; tanaka lines redrawn 4 px wide (its lines are 6-10 px apart, 6 px labels would touch).
$L import "$REAL/tanaka-twip-2um" --format tanaka --label-width 4 --out "$D/tanaka_w4"
$PY scripts/split_dataset.py "$D/tanaka_w4" --first 32 "$D/train_tanaka" "$D/tanaka_w4_rest"
$L import "$REAL/tanaka-twip-2um" --format tanaka --out "$D/tanaka"
$PY scripts/split_dataset.py "$D/tanaka" --first 32 "$D/tanaka_first" "$D/test_tanaka"
$L import "$REAL/creme-loops-512/masks1" --format masks --class loop \
  --images "$REAL/creme-loops-512/imgs" --out "$D/creme"
$PY scripts/split_dataset.py "$D/creme" --first 8 "$D/train_creme" "$D/test_creme"
# The real halves are small: list them several times so they weigh ~15 % of an epoch.
R="train_tanaka/images, train_tanaka/images, train_tanaka/images, train_tanaka/images, train_tanaka/images"
C="train_creme/images, train_creme/images, train_creme/images, train_creme/images, train_creme/images, train_creme/images"
cat > "$D/defects.yaml" <<YAML
path: $D
train: [train_M2/images, train_M1/images, train_loops/images, train_mixed/images, $R, $C]
val: [val_M2/images, val_loops/images]
names:
  0: dislocation
  1: loop
YAML
$L train --data "$D/defects.yaml" --out "$W/runs" --name defects-n512 --arch yolov8n-seg \
  --weights "$W/runs/defects-n320/weights/best.pt" \
  --imgsz 512 --batch 16 --seed 0 --hours 1.9 --epochs 60 --workers 2
cp "$W/runs/defects-n512/weights/best.pt" loopline/models/defects.pt
$L export --model loopline/models/defects.pt --format onnx --imgsz 512
