#!/usr/bin/env bash
# The GPU check of issue 14, as one prepared script (< 10 minutes on one H200):
#   1. make bench's CUDA profile (DINOv2 ViT-B teacher, random weights; teacher_size_cost_ratio 224 vs 518 px,
#      epoch_overhead_fraction, cached-KD vs student-only training throughput);
#   2. DINOv2 ViT-B and ViT-L forward cost at 224 vs 518 px (bf16 autocast, random weights);
#   3. the real CLI end to end on the GPU: extract with the bundled EfficientNet-Lite0 teacher on scikit-learn's
#      digits (1797 real images, 10 classes), then distill student, kd and customkd (SSL, 8 labels per class).
# Run from the repository root with the packages importable (PYTHONPATH=.); results go to $OUT (default /tmp/gpu).
set -uo pipefail
OUT=${OUT:-/tmp/gpu}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
python3 -c "import torch, timm; print('torch', torch.__version__, 'timm', timm.__version__)" | tee -a "$OUT/gpu.txt"

echo "== 1. make bench DEVICE=cuda"
cp docs/benchmarks.md "$OUT/benchmarks.md"
timeout 330 python3 -m bench.run --device cuda --results-dir "$OUT" --docs "$OUT/benchmarks.md" 2>&1 | tail -60

echo "== 2. DINOv2 teacher cost at 224 vs 518 px"
timeout 90 python3 - <<'EOF' 2>&1 | tee "$OUT/teacher_cost.txt"
import time, torch
from featcache.teachers import create_teacher

for name in ("dinov2_vitb", "dinov2_vitl"):
    rates = {}
    for size in (224, 518):
        teacher = create_teacher(name, weights="random", device="cuda", size=size)
        images = torch.randn(64, 3, size, size, device="cuda")
        with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16):
            for _ in range(3):
                teacher(images)
            torch.cuda.synchronize()
            started, n = time.perf_counter(), 10
            for _ in range(n):
                teacher(images)
            torch.cuda.synchronize()
        rates[size] = 64 * n / (time.perf_counter() - started)
        del teacher
    print(f"{name}: {rates[224]:.0f} img/s at 224 px, {rates[518]:.0f} img/s at 518 px, "
          f"cost ratio 224/518 = {rates[518] / rates[224]:.3f}")
EOF

echo "== 3. CLI end to end on the GPU (digits, Lite0 teacher)"
DATA=/tmp/digits
timeout 30 python3 - <<'EOF'
from pathlib import Path
import numpy as np
from PIL import Image
from sklearn.datasets import load_digits

digits = load_digits()
for i, (image, label) in enumerate(zip(digits.images, digits.target)):
    folder = Path("/tmp/digits") / f"digit{label}"
    folder.mkdir(parents=True, exist_ok=True)
    pixels = (image / 16.0 * 255).astype(np.uint8)
    Image.fromarray(pixels).resize((64, 64), Image.Resampling.BILINEAR).save(folder / f"{i:04d}.png")
EOF
STORE=/tmp/digits.zarr
SECONDS=0
timeout 120 python3 -m cli extract --teacher efficientnet_lite0 \
    --data folder:$DATA --out $STORE --views 4 --workers 8 --batch-size 256 2>&1 | tail -3
echo "extract wall ${SECONDS} s"
for method in student kd customkd; do
    SECONDS=0
    timeout 100 python3 -m cli distill --cache $STORE --method $method --labels-per-class 8 --workers 8 \
        --out /tmp/run-$method 2>&1 | grep -v "^epoch\|img/s]" | tail -12
    echo "distill $method wall ${SECONDS} s"
    python3 -c "import json; m = json.load(open('/tmp/run-$method/metrics.json')); f = m['final']; \
print('$method', {k: round(v, 4) for k, v in f.items() if isinstance(v, float)}, 'epochs', len(m['epochs']), \
'teacher probe', round(m['teacher_probe']['accuracy'], 4))" 2>&1
done | tee "$OUT/e2e.txt"
