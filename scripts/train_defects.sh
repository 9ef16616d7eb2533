#!/usr/bin/env bash
# Reproduces the shipped model loopline/models/defects.{pt,onnx} (see loopline/models/README.md).
# Usage: scripts/train_defects.sh [WORK_DIR] [stage1|...|stage6|wild|wild2|temporal|temporal-raw|wild-ft|wild-r3|bowing|arcs|arcs-zero-shot|inclined-zero-shot|inclined]   (default: /work
#        stage2; needs `make test`'s .venv). Run the stages in order: stage1-3, wild-r3, bowing,
#        arcs; stage 3 wrote the shipped weights until issue 15, arcs (run 9) writes them now.
#        stage4, p2, stage5 and stage6 (each after stage 3) and wild, wild2, temporal,
#        temporal-raw, wild-ft, arcs-zero-shot, inclined-zero-shot, inclined are the experiments of the model card that were not shipped.
#
# Three shipped runs, each warm-started from the one before, and two experiments from run 3:
#   defects-n320   stage1: 2 h from scratch on 320 px synthetic crops.
#   defects-n512   stage2: imgsz 512 on whole 512x512 synthetic frames with the presets' own
#                  ranges, plus the FIRST halves (in time) of the two real sets; their second
#                  halves are the real test sets of the model card.
#   defects-n512c  stage3: the same on fresh synthetic frames, with masks supervised at 1/2 of
#                  the input (mask_ratio=2); exported to loopline/models/defects.{pt,onnx}.
#   defects-n512d  stage4: run 3 continued on fresh frames (not shipped).
#   defects-p2     p2: prototypes at 1/2 of the input, arch yolov8n-seg-p2 (not shipped).
#   defects-n512e  stage5: run 3 continued with creme-like synthetic loops (elongated, blurred,
#                  larger) and creme frames 7-8 held out for validation (not shipped).
#   defects-n512f  stage6: run 4 with one mask per instance (overlap_mask=False) (not shipped).
#   defects-wild   wild: issue 15's zero-shot model, from scratch on domain-randomised frames
#                  only (no frame of tanaka-twip-2um or creme-loops-512), 320 px crops.
#   defects-wild2  wild2: defects-wild continued (fresh schedule) with bowing frames added.
#                  NAME=defects-wild3 FROM=.../defects-wild2/weights/last.pt continues it again.
#   defects-temporal, defects-temporal-raw  temporal, temporal-raw: defects-wild2 continued on
#                  synthetic video frames with and without a temporal channel (issue 15).
#   defects-wild-ft wild-ft: defects-wild continued with the real first halves.
#   defects-wild-r3 wild-r3: run 3 continued on 512 px domain-randomised frames and the real
#                  first halves (shipped as run 7).
#   defects-bowing bowing: run 7 continued with thin kinked dislocations bowing between shaded
#                  slip bands (preset bowing) and wild frames with those textures (run 8).
#   defects-arcs   arcs: run 8 continued with dense pile-ups of broad blurred arcs (preset arcs);
#                  shipped as run 9 (writes loopline/models/defects.{pt,onnx}).
#   defects-inclined-zs inclined-zero-shot: run 1 (synthetic only) continued on fresh synthetic
#                  frames with planar pile-ups seen through the foil (preset inclined), zero-shot.
#   defects-inclined inclined: run 9 continued on those frames and the real first halves (run
#                  10, not shipped).
# Wall time on 2 CPU cores: data ~2 min, each training run ~2 h (time-boxed), export 10 s.
set -euo pipefail
W=${1:-/work}
STAGE=${2:-stage2}
L=${LOOPLINE:-.venv/bin/loopline}
PY=${PYTHON:-.venv/bin/python}
REAL=${REAL:-../shared/data/real}
mkdir -p "$W/runs"
# Real-background patches (tanaka-twip-086um: no dislocation labels) and whole 512² frames,
# for the synthetic sets of the issue-15 stages.
BG="--backgrounds $REAL/tanaka-twip-086um/original"
S512="--set width=512 --set height=512 --jobs 2"

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

# Four synthetic training sets at the presets' own ranges (whole 512x512 frames):
#   synthetic OUT SEED N_M2 N_M1 N_LOOPS N_MIXED   (seeds SEED, SEED+1, SEED+2, SEED+3)
synthetic() {
  $L synth --preset M2    --count "$3" --seed "$2"         --out "$1/train_M2"    --jobs 2
  $L synth --preset M1    --count "$4" --seed $(($2 + 1)) --out "$1/train_M1"    --jobs 2
  $L synth --preset loops --count "$5" --seed $(($2 + 2)) --out "$1/train_loops" --jobs 2
  $L synth --preset mixed --count "$6" --seed $(($2 + 3)) --out "$1/train_mixed" --jobs 2
}

# A data yaml of the two classes.   classes_yaml YAML PATH "TRAIN, ..." "VAL, ..."
classes_yaml() {
  cat > "$1" <<YAML
path: $2
train: [$3]
val: [$4]
names:
  0: dislocation
  1: loop
YAML
}

# The data yaml: the four synthetic sets under OUT, the real first halves under REALDIR listed
# several times (they are small: ~15 % of an epoch), validation under REALDIR. Optionally another
# creme folder and its number of copies (default REALDIR/train_creme, 6) and one more synthetic
# set under OUT, listed after train_loops.
#   data_yaml OUT REALDIR [CREME_DIR COPIES [EXTRA_SET]]
data_yaml() {
  local r="$2/train_tanaka/images" c="${3:-$2/train_creme}/images" extra="${5:+, $5/images}"
  local creme="" i
  for ((i = 0; i < ${4:-6}; i++)); do creme+=", $c"; done
  classes_yaml "$1/defects.yaml" "$1" \
    "train_M2/images, train_M1/images, train_loops/images$extra, train_mixed/images, $r, $r, $r, $r, $r$creme" \
    "$2/val_M2/images, $2/val_loops/images"
}

# The real first halves in time of the two real sets in OUT/train_tanaka (tanaka-twip-2um frames
# 0-31, lines redrawn 4 px wide) and OUT/train_creme (creme-loops-512 frames 1-8), as in stage 2.
#   real_first_halves OUT
real_first_halves() {
  $L import "$REAL/tanaka-twip-2um" --format tanaka --label-width 4 --out "$1/tanaka_w4"
  $PY scripts/split_dataset.py "$1/tanaka_w4" --first 32 "$1/train_tanaka" "$1/tanaka_w4_rest"
  $L import "$REAL/creme-loops-512/masks1" --format masks --class loop \
    --images "$REAL/creme-loops-512/imgs" --out "$1/creme"
  $PY scripts/split_dataset.py "$1/creme" --first 8 "$1/train_creme" "$1/test_creme"
}

# The data yaml of the wild stages: the four synthetic sets under PATH, the real first halves
# under REALDIR (tanaka x5, creme x6, as in stages 2-3) and the validation sets VAL.
#   wild_yaml YAML PATH REALDIR VAL
wild_yaml() {
  local t="$3/train_tanaka/images" c="$3/train_creme/images" x=${5:+$5, }
  classes_yaml "$1" "$2" \
    "${x}train_wild/images, train_wild_loops/images, train_M2/images, train_loops/images, $t, $t, $t, $t, $t, $c, $c, $c, $c, $c, $c" \
    "$4"
}

# The 512-px continuation of runs 7-9 and the zero-shot runs after them (masks at 1/2, one mask
# per instance, one warm-up epoch), time-boxed.   train512 YAML NAME WEIGHTS SEED HOURS
train512() {
  $L train --data "$1" --out "$W/runs" --name "$2" --arch yolov8n-seg --weights "$3" \
    --set mask_ratio=2 --set overlap_mask=False --set warmup_epochs=1 \
    --imgsz 512 --batch 16 --seed "$4" --hours "$5" --epochs 60 --workers 2
}

# The synthetic frames of the inclined stages in OUT (made once): 1900 fresh 512 px frames, 500 of
# the `inclined` preset beside the presets of runs 7-9, and validation; OUT/defects.yaml lists them.
#   inclined_frames OUT
inclined_frames() {
  if [ ! -f "$1/defects.yaml" ]; then
    mkdir -p "$1"
    # shellcheck disable=SC2086
    {
    $L synth --preset inclined   --count 500 --seed 561 --out "$1/train_inclined"   $BG --jobs 2
    $L synth --preset arcs       --count 300 --seed 562 --out "$1/train_arcs"       $BG --jobs 2
    $L synth --preset wild       --count 400 --seed 563 --out "$1/train_wild"       $BG $S512
    $L synth --preset bowing     --count 200 --seed 564 --out "$1/train_bowing"     $BG --jobs 2
    $L synth --preset wild_loops --count 200 --seed 565 --out "$1/train_wild_loops" $BG $S512
    $L synth --preset loops      --count 150 --seed 566 --out "$1/train_loops"      --jobs 2
    $L synth --preset M2         --count 150 --seed 567 --out "$1/train_M2"         --jobs 2
    $L synth --preset inclined   --count 20  --seed 661 --out "$1/val_inclined"     $BG --jobs 2
    $L synth --preset wild       --count 20  --seed 663 --out "$1/val_wild"         $BG $S512
    $L synth --preset loops      --count 20  --seed 666 --out "$1/val_loops"        --jobs 2
    }
    classes_yaml "$1/defects.yaml" "$1" \
      "train_inclined/images, train_arcs/images, train_wild/images, train_bowing/images, train_wild_loops/images, train_loops/images, train_M2/images" \
      "val_inclined/images, val_wild/images, val_loops/images"
  fi
}

if [ "$STAGE" = wild ]; then
# Issue 15, zero-shot run `defects-wild` (from scratch): domain-randomised synthetic frames only
# (presets wild and wild_loops: line widths 2-14 px, spacings 5-60 px, bright and dark lines,
# loops 3-80 px, unlabelled slip traces, planar faults, bend contours, grain boundaries,
# burnt-in text, scale bars, information strips; real-background patches from
# tanaka-twip-086um, which has no dislocation labels) plus a few frames of the old presets.
# No frame of tanaka-twip-2um or creme-loops-512 is seen, so both are zero-shot test sets.
# 320x320 crops at native pixel scale (inference tiles 512 px frames and larger at that scale).
Z=$W/datawild
S="--set width=320 --set height=320 --jobs 2"
if [ ! -f "$Z/defects.yaml" ]; then
  mkdir -p "$Z"
  # shellcheck disable=SC2086
  {
  $L synth --preset wild       --count 1300 --seed 501 --out "$Z/train_wild"       $BG --jobs 2
  $L synth --preset wild_loops --count 500  --seed 502 --out "$Z/train_wild_loops" $BG --jobs 2
  $L synth --preset M2    --count 200 --seed 503 --out "$Z/train_M2"    $S --set pileups=1,3 --set slip_width=40,160
  $L synth --preset loops --count 100 --seed 504 --out "$Z/train_loops" $S --set loops=4,14
  $L synth --preset wild       --count 60 --seed 601 --out "$Z/val_wild"       $BG --jobs 2
  $L synth --preset wild_loops --count 30 --seed 602 --out "$Z/val_wild_loops" $BG --jobs 2
  }
  cat > "$Z/defects.yaml" <<YAML
path: $Z
train: [train_wild/images, train_wild_loops/images, train_M2/images, train_loops/images]
val: [val_wild/images, val_wild_loops/images]
names:
  0: dislocation
  1: loop
YAML
fi
$L train --data "$Z/defects.yaml" --out "$W/runs" --name defects-wild --arch yolov8n-seg \
  --set mask_ratio=2 --set overlap_mask=False --imgsz 320 --batch 16 --seed 11 \
  --hours "${HOURS:-1.75}" --epochs 100 --workers 2
exit 0
fi

if [ "$STAGE" = wild2 ]; then
# Issue 15, zero-shot run `defects-wild2`: defects-wild (stopped after 8 epochs) continued with a
# fresh learning-rate schedule on its own data plus 300 320x320 `bowing` frames (seed 531).
# Still no frame of tanaka-twip-2um or creme-loops-512: both stay zero-shot test sets.
Z=$W/datawild
S="--set width=320 --set height=320 --jobs 2"
if [ ! -f "$Z/defects2.yaml" ]; then
  # shellcheck disable=SC2086
  $L synth --preset bowing --count 300 --seed 531 --out "$Z/train_bowing" $BG $S
  sed 's#train_loops/images\]#train_loops/images, train_bowing/images]#' "$Z/defects.yaml" \
    > "$Z/defects2.yaml"
fi
$L train --data "$Z/defects2.yaml" --out "$W/runs" --name "${NAME:-defects-wild2}" --arch yolov8n-seg \
  --weights "${FROM:-$W/runs/defects-wild/weights/last.pt}" --set mask_ratio=2 \
  --set overlap_mask=False --set warmup_epochs=1 --imgsz 320 --batch 16 --seed 31 \
  --hours "${HOURS:-2.0}" --epochs 100 --workers 2
exit 0
fi

if [ "$STAGE" = temporal ] || [ "$STAGE" = temporal-raw ]; then
# Issue 15, item 3: does a temporal channel help a zero-shot model? Two arms from defects-wild2
# (never saw tanaka-twip-2um or creme-loops-512), the same 320 px synthetic video frames, seed,
# settings and time: `temporal` sees (frame, frame minus the median of its 4 registered previous
# frames, frame) as its three channels (scripts/temporal_dataset.py), `temporal-raw` (frame,
# frame, frame). Glide 1-4 px per frame, like tanaka's labelled frames, which are 5-50 video
# frames apart. Run both at once with THREADS=1 each so they share the 2 cores equally.
Z=$W/datatemporal
V="--video --frames 12 --set lead_velocity=1.0,4.0 --set lead_pinned_prob=0.15 --set stage_drift=0,1.0 --jobs 2"
if [ ! -f "$Z/videos.done" ]; then
  mkdir -p "$Z"
  # shellcheck disable=SC2086
  {
  $L synth --preset wild   --count 70 --seed 541 --out "$Z/videos_wild"   $BG $V --overwrite
  $L synth --preset bowing --count 30 --seed 542 --out "$Z/videos_bowing" $BG $V --overwrite \
    --set width=320 --set height=320
  $L synth --preset wild   --count 10 --seed 641 --out "$Z/videos_val"    $BG $V --overwrite
  }
  for arm in temporal raw; do
    for v in wild bowing val; do
      rm -rf "$Z/${arm}_$v"
      $PY scripts/temporal_dataset.py "$Z/videos_$v" "$Z/${arm}_$v" --k 4 --min-history 3 \
        --channels "$arm"
    done
    cat > "$Z/$arm.yaml" <<YAML
path: $Z
train: [${arm}_wild/images, ${arm}_bowing/images]
val: [${arm}_val/images]
names:
  0: dislocation
  1: loop
YAML
  done
  touch "$Z/videos.done"
fi
ARM=temporal; [ "$STAGE" = temporal-raw ] && ARM=raw
$L train --data "$Z/$ARM.yaml" --out "$W/runs" --name "defects-$STAGE" --arch yolov8n-seg \
  --weights "${FROM:-$W/runs/defects-wild2/weights/best.pt}" --set mask_ratio=2 \
  --set overlap_mask=False --set warmup_epochs=1 --set hsv_h=0 --set hsv_s=0 --imgsz 320 \
  --batch 16 --seed 41 --hours "${HOURS:-1.2}" --epochs 100 --workers 0 --threads "${THREADS:-2}"
exit 0
fi

if [ "$STAGE" = wild-ft ]; then
# Issue 15, fine-tuned run `defects-wild-ft`: defects-wild continued with the FIRST halves in
# time of the two real sets (tanaka-twip-2um frames 0-31, lines redrawn 4 px wide, x5;
# creme-loops-512 frames 1-8, x6) beside its own domain-randomised frames; the second halves
# are the fine-tuned test sets. Validation: the wild sets of stage wild.
Z=$W/datawild
F=$W/datawild-ft
if [ ! -f "$F/defects.yaml" ]; then
  mkdir -p "$F"
  real_first_halves "$F"
  wild_yaml "$F/defects.yaml" "$Z" "$F" "val_wild/images, val_wild_loops/images"
fi
$L train --data "$F/defects.yaml" --out "$W/runs" --name defects-wild-ft --arch yolov8n-seg \
  --weights "$W/runs/defects-wild/weights/best.pt" --set mask_ratio=2 --set overlap_mask=False \
  --set warmup_epochs=1 --imgsz 320 --batch 16 --seed 12 --hours "${HOURS:-0.5}" --epochs 60 \
  --workers 2
exit 0
fi

if [ "$STAGE" = wild-r3 ]; then
# Issue 15, run `defects-wild-r3` (the candidate to ship): run 3 (the shipped weights) continued
# at imgsz 512 on whole 512x512 domain-randomised frames (presets wild and wild_loops at 512,
# real-background patches from tanaka-twip-086um), a few frames of the old presets so that
# they are not forgotten, and the real first halves as in stages 2-3 (tanaka frames 0-31, lines
# 4 px wide, x5; creme frames 1-8, x6). Validation: the validation sets of stages 2-3 (made by
# stage 2 in $W/data512, else here) and 60 wild frames.
R=$W/datawild512
if [ ! -f "$R/defects.yaml" ]; then
  mkdir -p "$R"
  # shellcheck disable=SC2086
  {
  $L synth --preset wild       --count 600 --seed 511 --out "$R/train_wild"       $BG $S512
  $L synth --preset wild_loops --count 250 --seed 512 --out "$R/train_wild_loops" $BG $S512
  $L synth --preset M2    --count 100 --seed 513 --out "$R/train_M2"    --jobs 2
  $L synth --preset loops --count 50  --seed 514 --out "$R/train_loops" --jobs 2
  $L synth --preset wild  --count 40  --seed 611 --out "$R/val_wild"    $BG $S512
  $L synth --preset M2    --count 40  --seed 401 --out "$R/val_M2"      --jobs 2
  $L synth --preset loops --count 20  --seed 403 --out "$R/val_loops"   --jobs 2
  }
  real_first_halves "$R"
  wild_yaml "$R/defects.yaml" "$R" "$R" "val_M2/images, val_loops/images, val_wild/images"
fi
train512 "$R/defects.yaml" defects-wild-r3 "${FROM:-loopline/models/defects.pt}" 13 "${HOURS:-1.0}"
exit 0
fi

if [ "$STAGE" = arcs ]; then
# Issue 15, run 9 `defects-arcs` (shipped): run 8 (FROM: run 8's weights, e.g. `git show
# 4577f56:loopline/models/defects.pt > r8.pt`; the default, the shipped file, is run 9 itself
# once this stage has run) continued on run 8's
# data (made by stages wild-r3 and bowing in $W/datawild512 and $W/databowing) plus 400 frames of
# the `arcs` preset (dense pile-ups of broad, blurred, curved arcs 5-12 px wide and 14-48 px
# apart, which run 8 finds a third of) at 512 px. Validation adds 30 arcs frames.
B=$W/databowing
A=$W/dataarcs
if [ ! -f "$A/defects.yaml" ]; then
  mkdir -p "$A"
  for s in train_wild train_wild_loops train_M2 train_loops train_tanaka train_creme val_M2 \
           val_loops val_wild train_bowing train_wild2 val_bowing; do ln -sfn "$B/$s" "$A/$s"; done
  # shellcheck disable=SC2086
  {
  $L synth --preset arcs --count 400 --seed 551 --out "$A/train_arcs" $BG --jobs 2
  $L synth --preset arcs --count 30  --seed 651 --out "$A/val_arcs"   $BG --jobs 2
  }
  wild_yaml "$A/defects.yaml" "$A" "$A" \
    "val_M2/images, val_loops/images, val_wild/images, val_bowing/images, val_arcs/images" \
    "train_arcs/images, train_bowing/images, train_wild2/images"
fi
train512 "$A/defects.yaml" "${NAME:-defects-arcs}" "${FROM:-loopline/models/defects.pt}" 19 \
  "${HOURS:-1.1}"
# The shipped weights (run 9): best epoch, optimizer stripped, exported to ONNX at 512.
cp "$W/runs/${NAME:-defects-arcs}/weights/best.pt" loopline/models/defects.pt
$PY -c "from ultralytics.utils.torch_utils import strip_optimizer as s; s('loopline/models/defects.pt')"
$L export --model loopline/models/defects.pt --format onnx --imgsz 512
exit 0
fi
if [ "$STAGE" = arcs-zero-shot ]; then
# Issue 15, zero-shot run `defects-arcs-zs` (not shipped): run 9's synthetic data (stage arcs,
# $W/dataarcs) WITHOUT the real first halves, continued from the zero-shot `defects-wild2`
# (FROM), so that neither tanaka-twip-2um nor creme-loops-512 is ever seen: all 63 tanaka frames
# and all 16 creme frames are its test sets. tanaka-twip-086um (no dislocation labels) stays a
# source of background patches, as in every synthetic set.
A=$W/dataarcs
classes_yaml "$A/zero_shot.yaml" "$A" \
  "train_arcs/images, train_bowing/images, train_wild2/images, train_wild/images, train_wild_loops/images, train_M2/images, train_loops/images" \
  "val_M2/images, val_loops/images, val_wild/images, val_bowing/images, val_arcs/images"
train512 "$A/zero_shot.yaml" "${NAME:-defects-arcs-zs}" \
  "${FROM:-$W/runs/defects-wild2/weights/best.pt}" 23 "${HOURS:-1.5}"
exit 0
fi
if [ "$STAGE" = inclined-zero-shot ]; then
# Issue 15, zero-shot run `defects-inclined-zs` (not shipped), session 33: does a family of
# planar pile-ups seen through the foil (preset `inclined`: tens of short, thin, faint segments
# 4-14 px apart spanning the slip band between its two surface traces) teach a model to see
# such pile-ups in real frames it never saw? Starts from run 1 (FROM: `git show
# bf2a97d:loopline/models/defects.pt > r1.pt`), the last model that saw synthetic frames only,
# so that no frame of tanaka-twip-2um or creme-loops-512 was ever in its training; fresh
# 512 px frames of the presets of runs 7-9 beside the new family; tanaka-twip-086um (no
# dislocation labels) stays a source of background patches.
Z=$W/datainclined
inclined_frames "$Z"
train512 "$Z/defects.yaml" "${NAME:-defects-inclined-zs}" "${FROM:?FROM=run 1 weights (see above)}" \
  29 "${HOURS:-1.0}"
exit 0
fi
if [ "$STAGE" = inclined ]; then
# Issue 15, run 10 `defects-inclined` (session 34): run 9 (FROM, default the shipped weights)
# continued on stage inclined-zero-shot's 1900 synthetic frames (made here if absent: 500 of
# them `inclined`, planar pile-ups seen through the foil, which run 9 finds a quarter of) plus
# the real first halves (tanaka frames 0-31 with 4 px labels x5, creme frames 1-8 x6, as in runs
# 7-9). Validation adds run 9's arcs, bowing and M2 validation sets (the same seeds).
Z=$W/datainclined
inclined_frames "$Z"
I=$W/datainclined10
if [ ! -f "$I/defects.yaml" ]; then
  mkdir -p "$I"
  for s in train_inclined train_arcs train_wild train_bowing train_wild_loops train_loops \
           train_M2 val_inclined val_wild val_loops; do ln -sfn "$Z/$s" "$I/$s"; done
  real_first_halves "$I"
  # shellcheck disable=SC2086
  {
  $L synth --preset arcs   --count 30 --seed 651 --out "$I/val_arcs"   $BG --jobs 2
  $L synth --preset bowing --count 30 --seed 621 --out "$I/val_bowing" $BG --jobs 2
  $L synth --preset M2     --count 40 --seed 401 --out "$I/val_M2"     --jobs 2
  }
  wild_yaml "$I/defects.yaml" "$I" "$I" \
    "val_inclined/images, val_wild/images, val_loops/images, val_arcs/images, val_bowing/images, val_M2/images" \
    "train_inclined/images, train_arcs/images, train_bowing/images"
fi
train512 "$I/defects.yaml" "${NAME:-defects-inclined}" "${FROM:-loopline/models/defects.pt}" 31 \
  "${HOURS:-1.0}"
exit 0
fi
if [ "$STAGE" = bowing ]; then
# Issue 15, run 8 `defects-bowing` (shipped before run 9): run 7 (FROM, default the shipped
# weights; run 7's file is needed to remake it) continued on run
# 7's data (made by stage wild-r3 in $W/datawild512) plus 400 frames of the `bowing` preset
# (thin, kinked lines bulging between the traces of a shaded slip band, vignetting: the
# straining frames of Ruzaeva et al., which run 7 missed) and 200 fresh `wild` frames that carry
# the same textures. Validation adds 30 bowing frames.
R=$W/datawild512
B=$W/databowing
if [ ! -f "$B/defects.yaml" ]; then
  mkdir -p "$B"
  for s in train_wild train_wild_loops train_M2 train_loops train_tanaka train_creme val_M2 \
           val_loops val_wild; do ln -sfn "$R/$s" "$B/$s"; done
  # shellcheck disable=SC2086
  {
  $L synth --preset bowing --count 400 --seed 521 --out "$B/train_bowing" $BG --jobs 2
  $L synth --preset wild   --count 200 --seed 522 --out "$B/train_wild2"  $BG $S512
  $L synth --preset bowing --count 30  --seed 621 --out "$B/val_bowing"   $BG --jobs 2
  }
  wild_yaml "$B/defects.yaml" "$B" "$B" "val_M2/images, val_loops/images, val_wild/images, val_bowing/images" \
    "train_bowing/images, train_wild2/images"
fi
train512 "$B/defects.yaml" defects-bowing "${FROM:-loopline/models/defects.pt}" 17 "${HOURS:-1.6}"
# The shipped weights (run 8): best epoch, optimizer stripped, exported to ONNX at 512.
cp "$W/runs/defects-bowing/weights/best.pt" loopline/models/defects.pt
$PY -c "from ultralytics.utils.torch_utils import strip_optimizer as s; s('loopline/models/defects.pt')"
$L export --model loopline/models/defects.pt --format onnx --imgsz 512
exit 0
fi

D=$W/data512
# Stage 4's fresh synthetic frames (seeds 321-324) with the real first halves and validation sets
# of stages 2-3 (made by stage 2 in $D), in $W/data512c; made once, shared by stages 4-6 and p2.
#   fresh_frames
fresh_frames() {
  local c=$W/data512c
  if [ ! -f "$c/defects.yaml" ]; then
    mkdir -p "$c"
    synthetic "$c" 321 700 150 300 200
    data_yaml "$c" "$D"
  fi
}
if [ "$STAGE" = stage5 ]; then
# Real creme loops are larger, more elongated and blurrier than the loops preset draws them
# (creme frames 1-8: major axis median 37 px, aspect median 1.7, 10 % above 2.6; the preset's
# synthetic loops: 27 px, 1.4). Run 3 continued on stage 4's lines (made in $W/data512c), 150
# frames of the loops preset and 250 creme-like frames; creme frames 1-6 train, 7-8 validate.
E=$W/data512e
C=$W/data512c
CL="--set loop_aspect=1.0,3.0 --set loop_diameter=18,70 --set loop_blur=3.0,7.0
  --set loop_contrast=0.3,0.6 --set loop_ring_prob=0.15 --set lambda1=30,100 --set lambda2=30,100
  --set s2=0.8,1.2"
if [ ! -f "$E/defects.yaml" ]; then
  mkdir -p "$E"
  fresh_frames
  for s in train_M2 train_M1 train_mixed; do ln -sfn "$C/$s" "$E/$s"; done
  $L synth --preset loops --count 150 --seed 335 --out "$E/train_loops"    --jobs 2
  # shellcheck disable=SC2086
  $L synth --preset loops --count 250 --seed 336 --out "$E/train_loops_cl" --jobs 2 $CL
  # shellcheck disable=SC2086
  $L synth --preset loops --count 20  --seed 406 --out "$E/val_loops_cl"   --jobs 2 $CL
  $PY scripts/split_dataset.py "$D/train_creme" --first 6 "$E/train_creme6" "$E/val_creme78"
  data_yaml "$E" "$D" "$E/train_creme6" 8 train_loops_cl
fi
$L train --data "$E/defects.yaml" --out "$W/runs" --name defects-n512e --arch yolov8n-seg \
  --weights "$W/runs/defects-n512c/weights/best.pt" --set mask_ratio=2 --set warmup_epochs=1 \
  --imgsz 512 --batch 16 --seed 5 --hours 0.9 --epochs 60 --workers 2
exit 0
fi
if [ "$STAGE" = stage4 ] || [ "$STAGE" = p2 ] || [ "$STAGE" = stage6 ]; then
E=$W/data512c
fresh_frames
if [ "$STAGE" = p2 ]; then
# Not shipped (see the model card): prototypes at 1/2 of the input. Architecture yolov8n-seg-p2
# (loopline/training/yolov8-seg-p2.yaml) is run 3's network plus a stride-4 branch that feeds the
# Segment head; run 3's weights go into every layer that kept its shape
# (loopline.training.transfer_weights), the rest starts from scratch. Masks at 1/2 by default.
$L train --data "$E/defects.yaml" --out "$W/runs" --name defects-p2 --arch yolov8n-seg-p2 \
  --weights "$W/runs/defects-n512c/weights/best.pt" --set mask_ratio=2 \
  --imgsz 512 --batch 16 --seed 2 --hours 2.0 --epochs 60 --workers 2
exit 0
fi
if [ "$STAGE" = stage6 ]; then
# Not shipped (see the model card): stage 4 with each instance's whole mask as its target.
# Ultralytics' default (overlap_mask=True) paints all masks of a frame into one index image,
# smaller instances on top, so a line loses the pixels it shares with a crossing or touching
# smaller one; loopline eval's ground truth keeps them.
$L train --data "$E/defects.yaml" --out "$W/runs" --name defects-n512f --arch yolov8n-seg \
  --weights "$W/runs/defects-n512c/weights/best.pt" --set mask_ratio=2 --set warmup_epochs=1 \
  --set overlap_mask=False --imgsz 512 --batch 16 --seed 3 --hours 0.8 --epochs 60 --workers 2
exit 0
fi
# stage 4 (not shipped: it measured level with run 3 on validation, see the model card): run 3
# continued on these fresh frames with one warm-up epoch.
$L train --data "$E/defects.yaml" --out "$W/runs" --name defects-n512d --arch yolov8n-seg \
  --weights "$W/runs/defects-n512c/weights/best.pt" --set mask_ratio=2 --set warmup_epochs=1 \
  --imgsz 512 --batch 16 --seed 3 --hours 0.8 --epochs 60 --workers 2
exit 0
fi
if [ "$STAGE" = stage3 ]; then
# stage 3 (the shipped weights): run 2 continued on FRESH synthetic frames (seeds 311-314, so no
# frame repeats) with the same real first halves and validation sets, made by stage 2 in $D.
B=$W/data512b
mkdir -p "$B"
synthetic "$B" 311 700 150 300 200
data_yaml "$B" "$D"
# mask_ratio=2: ground-truth masks at 1/2 of the input instead of 1/4, and the loss compares
# them with the prototypes upsampled bilinearly, as inference decodes them: at 1/4 a 6 px label
# is 1.5 px and labels 8 px apart touch.
$L train --data "$B/defects.yaml" --out "$W/runs" --name defects-n512c --arch yolov8n-seg \
  --weights "$W/runs/defects-n512/weights/best.pt" --set mask_ratio=2 \
  --imgsz 512 --batch 16 --seed 1 --hours 1.7 --epochs 60 --workers 2
cp "$W/runs/defects-n512c/weights/best.pt" loopline/models/defects.pt
$L export --model loopline/models/defects.pt --format onnx --imgsz 512
exit 0
fi

# stage 2: whole 512x512 frames, presets' ranges (the test sets use seeds 9001 and 9003).
mkdir -p "$D"
synthetic "$D" 301 600 200 250 200
$L synth --preset M2    --count 40  --seed 401 --out "$D/val_M2"      --jobs 2
$L synth --preset loops --count 20  --seed 403 --out "$D/val_loops"   --jobs 2
# Real frames: first 32 of the 63 tanaka frames (time order) and loops frames 1-8 of creme for
# training; tanaka lines redrawn 4 px wide (its lines are 6-10 px apart, 6 px labels would touch).
$L import "$REAL/tanaka-twip-2um" --format tanaka --label-width 4 --out "$D/tanaka_w4"
$PY scripts/split_dataset.py "$D/tanaka_w4" --first 32 "$D/train_tanaka" "$D/tanaka_w4_rest"
$L import "$REAL/tanaka-twip-2um" --format tanaka --out "$D/tanaka"
$PY scripts/split_dataset.py "$D/tanaka" --first 32 "$D/tanaka_first" "$D/test_tanaka"
$L import "$REAL/creme-loops-512/masks1" --format masks --class loop \
  --images "$REAL/creme-loops-512/imgs" --out "$D/creme"
$PY scripts/split_dataset.py "$D/creme" --first 8 "$D/train_creme" "$D/test_creme"
data_yaml "$D" "$D"
$L train --data "$D/defects.yaml" --out "$W/runs" --name defects-n512 --arch yolov8n-seg \
  --weights "$W/runs/defects-n320/weights/best.pt" \
  --imgsz 512 --batch 16 --seed 0 --hours 1.9 --epochs 60 --workers 2
