#!/usr/bin/env bash
# The README's main job, in one command: install, make the synthetic fashion set if it is missing, train the
# demo model from scratch, evaluate it, and write its predictions with overlay pictures.
#
#   bash scripts/demo.sh                          # everything, on the CPU (or the first GPU if there is one)
#   bash scripts/demo.sh solver.max_iter=200      # extra key=value arguments go to train.py
#   DEMO_SKIP_INSTALL=1 bash scripts/demo.sh      # when the package is already installed
#
# Outputs: datasets/synthetic/ (the data), output/synthetic_demo/ (checkpoints, metrics.jsonl, loss_curves.png,
# eval/final/ with evaluation.json, predictions.json and overlays/*.png). Safe to run again: pip skips what is
# installed, the data is generated only once, and training starts afresh in output/synthetic_demo/.
set -euo pipefail
cd "$(dirname "$0")/.."
start=$SECONDS

echo "== 1/4 install (requirements.txt, then this package with its native ops)"
if [ "${DEMO_SKIP_INSTALL:-0}" = "1" ]; then
    echo "skipped (DEMO_SKIP_INSTALL=1)"
else
    python -m pip install -q -r requirements.txt
    python -m pip install -q --no-build-isolation -e .
fi

DATA=datasets/synthetic
echo "== 2/4 synthetic fashion set in $DATA"
if [ -f "$DATA/instances_train.json" ] && [ -f "$DATA/instances_val.json" ]; then
    echo "already there (delete $DATA to regenerate)"
else
    python -m maskrcnn.data.synthetic --out "$DATA" --num-train 600 --num-val 100 --seed 0 --size 128
fi

OUT=output/synthetic_demo
echo "== 3/4 train configs/synthetic_demo.yaml from scratch, then evaluate on the validation split"
python train.py --config configs/synthetic_demo.yaml output_dir="$OUT" "$@"

echo "== 4/4 summary"
python - "$OUT" <<'EOF'
import json, os, sys
out = sys.argv[1]
final = os.path.join(out, "eval", "final")
with open(os.path.join(final, "evaluation.json")) as f:
    report = json.load(f)
for iou_type, name in (("segm", "mask"), ("bbox", "box")):
    part = report[iou_type]
    print(f"{name} AP {part['AP']:.3f}  AP50 {part['AP50']:.3f}  AP75 {part['AP75']:.3f}")
overlays = os.path.join(final, "overlays")
print(f"predictions: {os.path.join(final, 'predictions.json')} ({report['num_predictions']} detections "
      f"on {report['num_images']} images)")
print(f"overlays: {overlays}/ ({len(os.listdir(overlays))} pictures); loss curves: {os.path.join(out, 'loss_curves.png')}")
EOF
echo "total time: $(( (SECONDS - start) / 60 )) min $(( (SECONDS - start) % 60 )) s"
