#!/usr/bin/env bash
# The reference recipe and the fast CPU config on a GPU: MaxF and seconds per epoch.
#
#   bash benchmarks/gpu_reference.sh [DATA] [OUT]      # DATA defaults to ../shared/data/kitti_road
#
# 1. reference: configs/kitti_fcn8s.yaml as the exercise has it (FCN-8s/VGG16, 160x576,
#    40 epochs, batch 16, Adam 1e-4, keep prob 0.5), from scratch;
# 2. fast: configs/kitti_fast_cpu.yaml (FCN-8s/ResNet-18 and its recipe), without the CPU time
#    budget: its 100 epochs decide (the cosine schedule then follows the epochs).
# Each run writes eval_val.json (full-resolution devkit scores of best.ckpt on its val split);
# the summary (OUT/summary.md) lists MaxF, AP, epochs, median seconds per epoch and total time.
# Add --pretrained to EXTRA (EXTRA="--pretrained" bash ...) on a connected machine.
set -euo pipefail
DATA="${1:-../shared/data/kitti_road}"
OUT="${2:-runs/gpu_reference}"
EXTRA="${EXTRA:-}"
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader > "$OUT/gpu.txt" || true

run() {  # name, config, extra args...
    local name="$1" config="$2"
    shift 2
    local start end
    start=$(date +%s)
    semseg train --config "$config" --data "$DATA" --run-dir "$OUT/$name" --overwrite \
        --accelerator gpu --devices 1 "$@" $EXTRA > "$OUT/$name.log" 2>&1
    end=$(date +%s)
    echo "$name $((end - start))" >> "$OUT/wall_seconds.txt"
}

: > "$OUT/wall_seconds.txt"
run reference kitti_fcn8s
run fast kitti_fast_cpu --set train.max_time_s=null

python3 - "$OUT" <<'EOF'
import csv, json, statistics, sys
from pathlib import Path

out = Path(sys.argv[1])
walls = dict(line.split() for line in (out / "wall_seconds.txt").read_text().splitlines())
gpu = (out / "gpu.txt").read_text().strip() if (out / "gpu.txt").is_file() else "?"
lines = [
    f"GPU: {gpu}",
    "",
    "| run | val MaxF % | val AP % | epochs | s / epoch (median) | wall s |",
    "|---|---|---|---|---|---|",
]
for name in ("reference", "fast"):
    run = out / name
    scores = json.loads((run / "eval_val.json").read_text())["groups"]["all"]
    rows = list(csv.DictReader((run / "metrics.csv").open()))
    seconds = statistics.median(float(row["seconds"]) for row in rows)
    lines.append(
        f"| {name} | {scores['max_f']:.1f} | {scores['ap']:.1f} | {len(rows)} "
        f"| {seconds:.1f} | {walls.get(name, '?')} |"
    )
(out / "summary.md").write_text("\n".join(lines) + "\n")
print("\n".join(lines))
EOF
