#!/usr/bin/env bash
# Every GPU measurement of the training cost, one JSON file each under $OUT (default: a new temp folder).
#
#   UPSTREAM_DIR=/path/to/CASD bash benchmarks/gpu_check.sh            # on the GPU machine (aim: < 8 min)
#   GPU_CHECK_DEVICE=cpu GPU_CHECK_TINY=1 bash benchmarks/gpu_check.sh  # the same script at tiny sizes on CPU
#
# Writes: bench_fp32.json, bench_bf16.json, bench_bf16_compile.json (ours vs upstream at batch 16 when
# UPSTREAM_DIR is set; peak memory, per-phase times, compile time), sync_check.json (host syncs inside our
# step under torch.cuda.set_sync_debug_mode), precision_flops.json (fp32 vs bf16 pixels and SSIM, test-stage
# images/s over the 8,570-pair protocol at random weights, FLOPs per train step for MFU).
set -euo pipefail
cd "$(dirname "$0")/.."
DEVICE="${GPU_CHECK_DEVICE:-cuda}"
OUT="${OUT:-$(mktemp -d)}"
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
UP=()
if [ -n "${UPSTREAM_DIR:-}" ]; then UP=(--upstream-dir "$UPSTREAM_DIR"); fi
if [ -n "${GPU_CHECK_TINY:-}" ]; then
  python - "$OUT/tiny.yaml" <<'PY'
import sys, yaml
sys.path.insert(0, "tests")
from helpers import tiny_params
p = tiny_params(); p["train"].pop("deterministic")
yaml.safe_dump(p, open(sys.argv[1], "w"))
PY
  PARAMS=(--params "$OUT/tiny.yaml"); BATCH=4; STEPS=2; PAIRS=16; UP=()
else
  PARAMS=(--params params-deepfashion.yaml); BATCH=16; STEPS=5; PAIRS=8570
fi
B=benchmarks/bench_vs_upstream.py
echo "gpu_check: device $DEVICE, out $OUT" >&2
python $B "${PARAMS[@]}" "${UP[@]}" --device "$DEVICE" --batch-size $BATCH --steps $STEPS --amp none > "$OUT/bench_fp32.json"
python $B "${PARAMS[@]}" "${UP[@]}" --device "$DEVICE" --batch-size $BATCH --steps $STEPS --amp bf16 > "$OUT/bench_bf16.json"
python $B "${PARAMS[@]}" --device "$DEVICE" --batch-size $BATCH --steps $STEPS --amp bf16 --compile --no-phases \
  > "$OUT/bench_bf16_compile.json"
python benchmarks/gpu_check_extra.py "${PARAMS[@]}" --device "$DEVICE" --batch-size $BATCH --pairs $PAIRS \
  --out "$OUT"
echo "gpu_check: done, JSON in $OUT" >&2
ls "$OUT" >&2
