#!/usr/bin/env bash
# The README's main job, in one command: install, make the synthetic fashion set if it is missing, train the
# demo model from scratch, evaluate it, and write its predictions with overlay pictures.
#
#   bash scripts/demo.sh                          # everything, on the CPU (or the first GPU if there is one)
#   bash scripts/demo.sh solver.max_iter=200      # extra key=value arguments go to train.py
#   bash scripts/demo.sh output_dir=/tmp/run      # train (and summarise) there instead
#   DEMO_SKIP_INSTALL=1 bash scripts/demo.sh      # when the package is already installed
#
# Outputs: datasets/synthetic/ (the data), output/synthetic_demo/ or the output_dir you give (checkpoints,
# metrics.jsonl, loss_curves.png, eval/final/ with evaluation.json, predictions.json and overlays/*.png).
# Safe to run again: pip skips what is installed, the data is generated only once, and training starts
# afresh in its output folder. At the end it prints the scores, the wall and CPU time of each step and the
# machine's load average (a busy machine makes every step slower).
set -euo pipefail
cd "$(dirname "$0")/.."
start=$SECONDS

OUT=output/synthetic_demo
for arg in "$@"; do  # train.py applies key=value arguments in order: the last output_dir wins there too
    case "$arg" in output_dir=*) OUT="${arg#output_dir=}" ;; esac
done

TIMES_FILE=$(mktemp)
trap 'rm -f "$TIMES_FILE"' EXIT
child_cpu() {  # CPU = user + system seconds of every finished child process so far (second line of `times`;
    times > "$TIMES_FILE"  # run in this shell: a pipe or $(...) would ask a fresh subshell, which has no children)
    CPU=$(awk 'NR == 2 { t = 0; for (i = 1; i <= 2; i++) { split($i, p, "m"); t += p[1] * 60 + p[2] }
                         printf "%d", t }' "$TIMES_FILE")
}
STEPS=""
step_start() { step_wall=$SECONDS; child_cpu; step_cpu=$CPU; }
step_end() {
    child_cpu
    STEPS+=$(printf '  %-26s %5d s wall  %5d s CPU' "$1" $((SECONDS - step_wall)) $((CPU - step_cpu)))$'\n'
}
load_average() { if [ -r /proc/loadavg ]; then cut -d' ' -f1-3 /proc/loadavg; else echo "unknown"; fi; }
load_start=$(load_average)

echo "== 1/4 install (requirements.txt, then this package with its native ops)"
step_start
if [ "${DEMO_SKIP_INSTALL:-0}" = "1" ]; then
    echo "skipped (DEMO_SKIP_INSTALL=1)"
else
    python -m pip install -q -r requirements.txt
    python -m pip install -q --no-build-isolation -e .
fi
step_end "1/4 install"

DATA=datasets/synthetic
echo "== 2/4 synthetic fashion set in $DATA"
step_start
if [ -f "$DATA/instances_train.json" ] && [ -f "$DATA/instances_val.json" ]; then
    echo "already there (delete $DATA to regenerate)"
else
    python -m maskrcnn.data.synthetic --out "$DATA" --num-train 600 --num-val 100 --seed 0 --size 128
fi
step_end "2/4 synthetic data"

echo "== 3/4 train configs/synthetic_demo.yaml from scratch, then evaluate on the validation split"
step_start
python train.py --config configs/synthetic_demo.yaml output_dir="$OUT" "$@"
step_end "3/4 train and evaluate"

echo "== 4/4 summary of $OUT"
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
total=$((SECONDS - start))
echo "time per step (CPU = user + system seconds of the step's processes, summed over cores):"
printf '%s' "$STEPS"
echo "total: $((total / 60)) min $((total % 60)) s wall on $(nproc 2>/dev/null || echo '?') CPU cores;" \
     "load average (1, 5, 15 min) $load_start at the start, $(load_average) at the end"
