#!/usr/bin/env bash
# Reproduces the shipped model loopline/models/defects.{pt,onnx} (see loopline/models/README.md).
# Usage: scripts/train_defects.sh [WORK_DIR]   (default /work; needs `make test`'s .venv)
# Wall time on 2 CPU cores: data ~1 min, training 2 h (time-boxed), export 10 s.
set -euo pipefail
W=${1:-/work}
L=${LOOPLINE:-.venv/bin/loopline}
D=$W/data
mkdir -p "$D" "$W/runs"
S="--set width=320 --set height=320 --jobs 2"
# 320x320 crops at the native pixel scale of 512x512 frames: the model trains at imgsz 320
# and runs at imgsz 512 on whole frames, so lines keep the width they were trained at.
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
cp "$W/runs/defects-n320/weights/best.pt" loopline/models/defects.pt
$L export --model loopline/models/defects.pt --format onnx --imgsz 512
