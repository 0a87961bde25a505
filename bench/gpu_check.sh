#!/usr/bin/env bash
# The GPU check of issue 24, as one prepared script (under 8 minutes on one H100 or H200):
#   1. the no-host-wait tests on the GPU: steady KD steps under torch.cuda.set_sync_debug_mode("error"), uint8
#      batches normalised after the copy (tests/trainer/test_host_syncs.py); view replay on the device equal to
#      PIL's (exact engine) and within tolerance (fast) on CUDA tensors (tests/trainer/test_replay.py);
#   2. make bench's CUDA profile (DINOv2 ViT-B teacher, random weights; extraction, cached KD vs the student alone,
#      online KD, the student against its synthetic-batch and plain-loop limit, device replay vs the workers,
#      memory, epoch overhead, teacher size);
#   3. the real CLI end to end on the GPU: extract with the bundled EfficientNet-Lite0 teacher on scikit-learn's
#      digits (1797 real images, 10 classes), then distill student and customkd (SSL, 8 labels per class; views
#      replayed on the device, --replay auto), each run's replay_used from config.json.
# Run from the repository root with the packages importable (PYTHONPATH=.); results go to $OUT (default /tmp/gpu),
# at most 8 files. Packages the GPU image lacks travel as wheels in .whl/ (bench/gpu_wheels.txt lists them); they
# are installed into /tmp/site when that folder is there. docs/benchmarks.md says how to run it.
set -uo pipefail
OUT=${OUT:-/tmp/gpu}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 PYTHONPATH=.
if compgen -G ".whl/*.whl" > /dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        || exit 1
    export PYTHONPATH=/tmp/site:.
fi
{
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
    python3 -c "import torch, timm; print('torch', torch.__version__, 'timm', timm.__version__)"
    nproc
} 2>&1 | tee "$OUT/gpu.txt"

echo "== 1. no host waits, uint8 batches, device replay (pytest, CUDA tests not skipped)"
timeout 120 python3 -m pytest -q -p no:cacheprovider -rs tests/trainer/test_host_syncs.py tests/trainer/test_replay.py \
    -k "not worker_run" 2>&1 | tee "$OUT/pytest.txt"

echo "== 2. make bench DEVICE=cuda"
cp docs/benchmarks.md "$OUT/benchmarks.md"
timeout 300 python3 -m bench.run --device cuda --results-dir "$OUT/bench" --docs "$OUT/benchmarks.md" 2>&1 \
    | tee "$OUT/bench.txt" | tail -40
rm -rf "$OUT/bench/tmp"

echo "== 3. CLI end to end on the GPU (digits, Lite0 teacher)"
STORE=/tmp/digits.zarr
rm -rf "$STORE" /tmp/run-student /tmp/run-customkd
{
    SECONDS=0
    timeout 60 python3 -m customkd.cli extract --teacher efficientnet_lite0 --data digits --out $STORE --views 4 --workers 8 \
        --batch-size 256 2>&1 | tail -3
    echo "extract wall ${SECONDS} s"
    for method in student customkd; do
        SECONDS=0
        timeout 75 python3 -m customkd.cli distill --cache $STORE --method $method --labels-per-class 8 --workers 8 \
            --epochs 6 --out /tmp/run-$method 2>&1 | grep -v "^epoch\|img/s]" | tail -8
        echo "distill $method wall ${SECONDS} s"
        python3 -c "import json; m = json.load(open('/tmp/run-$method/metrics.json')); f = m['final']; \
print('$method', {k: round(v, 4) for k, v in f.items() if isinstance(v, float)}, 'epochs', len(m['epochs']), \
'samples/s', [round(e['train']['samples_per_s']) for e in m['epochs']], \
'teacher probe', round(m['teacher_probe']['accuracy'], 4), \
'replay', json.load(open('/tmp/run-$method/config.json')).get('replay_used'))"
    done
} 2>&1 | tee "$OUT/e2e.txt"
echo "gpu_check wall ${SECONDS} s" | tee -a "$OUT/gpu.txt"  # the groups above ran in subshells: this is the total
