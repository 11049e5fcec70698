#!/usr/bin/env bash
# The GPU path, checked on a machine with a GPU, in one go (at most 8 minutes):
#
#   bash bench/gpu_check.sh            # from anywhere; prints one Markdown table at the end
#
#   build       a clean build of the CUDA extension: `pip install --no-deps --no-build-isolation -e .`
#               with the torch already installed and MASKRCNN_REQUIRE_CUDA=1, so that a CUDA build
#               that fails is an error here, not a silent CPU fallback
#   doctor      python -m maskrcnn.doctor (its CUDA smoke test: native vs reference)
#   cuda-tests  pytest -m cuda (every CUDA-marked test)
#   parity      CUDA ROIAlign (forward, backward; float32/64, fp16, bf16) and NMS vs the CPU kernels
#   ops-speed   ROIAlign fwd+bwd and NMS: native CUDA vs the pure-PyTorch references
#   train       train.py, R50-FPN at 800x1333 on the synthetic set, bf16 AMP, 300 iterations:
#               img/s and peak memory
#   ddp         the same with torchrun, 2 processes, when 2 or more GPUs are visible (else skipped)
#   infer       inference img/s at batch 1 and 8
#
# Each step runs under `timeout` (its own cap, and never past the 8-minute deadline); its log is in
# $GPU_CHECK_WORK/logs (default /tmp/gpu_check/logs). The exit status is 1 when any step failed,
# else 0. Without a visible GPU it says so and exits 0. pycocotools is needed by the data pipeline:
# when it is missing and wheels are in .whl/ (see the device notes), they are installed first.
# The Python parts are in bench/gpu_check.py.
set -u
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python
export GPU_CHECK_WORK=${GPU_CHECK_WORK:-/tmp/gpu_check}
export PYTHONUNBUFFERED=1
LOGS=$GPU_CHECK_WORK/logs
DEADLINE=$(( $(date +%s) + 480 ))

if ! "$PYTHON" -c "import torch" 2>/dev/null; then
    echo "gpu_check: torch is not importable with $PYTHON: cannot check anything" >&2
    exit 1
fi
if ! "$PYTHON" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "gpu_check: no CUDA GPU visible (torch $("$PYTHON" -c 'import torch; print(torch.__version__)'), \
torch.cuda.is_available() is False): nothing to check on this machine. Exit status 0."
    exit 0
fi
rm -rf "$GPU_CHECK_WORK"
mkdir -p "$LOGS"

ROWS=()
FAILED=0
if ! "$PYTHON" -c "import pycocotools" 2>/dev/null && ls .whl/*.whl >/dev/null 2>&1; then
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
if ! "$PYTHON" -c "import pycocotools" 2>/dev/null; then  # the steps that need it fail below, too
    ROWS+=("| setup | FAILED | 0 s | pycocotools is not importable and .whl/ has no wheel of it (the data pipeline, train.py and the tests need it) |")
    FAILED=1
fi
run_step() {  # run_step NAME CAP_SECONDS COMMAND...: one row of the table
    local name=$1 cap=$2
    shift 2
    local left=$(( DEADLINE - $(date +%s) ))
    if (( left < 15 )); then
        ROWS+=("| $name | FAILED | 0 s | not run: the 8-minute budget was spent |")
        FAILED=1
        return
    fi
    (( cap > left )) && cap=$left
    local result=$LOGS/$name.result start status detail
    start=$(date +%s)
    echo "== $name (at most ${cap} s) =="
    GPU_CHECK_RESULT=$result timeout --kill-after=10 "$cap" "$@" >"$LOGS/$name.log" 2>&1
    local rc=$? seconds=$(( $(date +%s) - start ))
    if (( rc == 124 || rc == 137 )); then status="FAILED (timed out after ${cap} s)"
    elif (( rc != 0 )); then status="FAILED (exit $rc)"
    else status=ok; fi
    [[ $status == ok ]] || FAILED=1
    if [[ -s $result ]]; then detail=$(head -n 1 "$result")
    else detail="log: $(tail -n 1 "$LOGS/$name.log" | tr '|' '/' | cut -c1-300)"; fi
    [[ $status == ok ]] || tail -n 30 "$LOGS/$name.log"
    ROWS+=("| $name | $status | ${seconds} s | $detail |")
}

run_step build 240 "$PYTHON" bench/gpu_check.py build
run_step doctor 60 "$PYTHON" -m maskrcnn.doctor
run_step cuda-tests 120 "$PYTHON" bench/gpu_check.py cuda-tests
run_step parity 60 "$PYTHON" bench/gpu_check.py parity
run_step ops-speed 90 "$PYTHON" bench/gpu_check.py ops-speed
run_step train 200 "$PYTHON" bench/gpu_check.py train
run_step ddp 120 "$PYTHON" bench/gpu_check.py ddp
run_step infer 90 "$PYTHON" bench/gpu_check.py infer

echo
echo "GPU check: $("$PYTHON" -c 'import torch; print(torch.cuda.get_device_name(0), "x", torch.cuda.device_count(), "/ torch", torch.__version__, "/ CUDA", torch.version.cuda)')"
echo
echo "| step | result | time | details |"
echo "|---|---|---|---|"
printf '%s\n' "${ROWS[@]}"
exit $FAILED
