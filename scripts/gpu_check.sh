#!/usr/bin/env bash
# offroadseg GPU check: one script for a GPU machine with torch (CUDA) preinstalled and no network.
#
#   scripts/gpu_check.sh [--out DIR] [--dry-run] [--cpu]
#
# Runs from the source tree (PYTHONPATH=src, nothing installed in editable mode), in about 8 minutes
# or less on one recent GPU:
#   1. installs the packages this Python lacks from wheels carried beside this script
#      (scripts/wheels/, or $OFFROADSEG_WHEELS) with pip --no-index;
#   2. the CUDA-marked tests (pytest -m cuda: bf16 training step, precision auto resolution);
#   3. phase 3 as shipped (ViT-B/14 with registers, random weights, 644x364, PPM head, focal+dice,
#      frozen-feature cache with 2 views) for 2 epochs in bf16 on synthetic data;
#   4. configs/duality_gpu.yaml as shipped (ViT-B/14-reg, LoRA in every block, UPerNet, no cache,
#      every augmentation) for 2 epochs on the same synthetic data: its epoch time;
#   5. bench train (epoch time without and with the caches) and bench infer --device cuda
#      (ViT-B + PPM latency), both with JSON out;
#   6. a Markdown summary (DIR/summary.md) for docs/benchmarks.md.
# Every step writes DIR/<step>.log and DIR/<step>.json; the script stops at the first failure.
#
# --dry-run  print the commands, run nothing (checks the plan on any machine)
# --cpu      the same steps on CPU at toy scale (tiny test backbone, 56x98): checks the plumbing
#            on a machine without a GPU; its timings mean nothing
#
# Preparing the wheels (on a machine with network, once): match the GPU machine's Python version
# and platform (print them there with: python3 -c "import sys,platform; print(sys.version, platform.machine())"),
# e.g. for CPython 3.10 on x86_64 Linux:
#
#   pip download -d scripts/wheels --only-binary=:all: --python-version 3.10 --implementation cp \
#       --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 \
#       "transformers>=4.47" "lightning>=2.4" "torchmetrics>=1.4" "albumentations==2.0.*" \
#       "opencv-python-headless>=4.8" "pillow>=10" "matplotlib>=3.7" "pyyaml>=6" "safetensors>=0.4" \
#       "platformdirs>=3" "tqdm>=4.60" "onnx>=1.15" "onnxruntime>=1.17" "peft>=0.11" "pytest>=8"
#   rm -f scripts/wheels/torch-* scripts/wheels/nvidia_* scripts/wheels/triton-*   # the GPU machine has its own
#
# albumentations pulls binary dependencies (opencv, scipy, pydantic-core, simsimd, stringzilla, albucore):
# --only-binary=:all: makes pip fetch them for the target Python, not the one pip runs on. Copy the
# source tree with scripts/wheels/ to the GPU machine and run this script from anywhere.

set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/.." && pwd)"
OUT="$REPO/runs/gpu_check"
DRY=0
CPU=0
while [[ $# -gt 0 ]]; do
    case "$1" in
        --out) OUT="$2"; shift 2 ;;
        --dry-run) DRY=1; shift ;;
        --cpu) CPU=1; shift ;;
        -h|--help) sed -n '2,21p' "$0"; exit 0 ;;
        *) echo "gpu_check.sh: unknown argument $1; use --out DIR, --dry-run or --cpu" >&2; exit 2 ;;
    esac
done

PY="${PYTHON:-python3}"
WHEELS="${OFFROADSEG_WHEELS:-$HERE/wheels}"
export PYTHONPATH="$REPO/src${PYTHONPATH:+:$PYTHONPATH}"
export HF_HUB_OFFLINE=1 NO_ALBUMENTATIONS_UPDATE=1 OFFROADSEG_CACHE_DIR="$OUT/cache"
OSEG=("$PY" -m offroadseg)
START=$SECONDS

step() {  # step NAME TIMEOUT_S COMMAND...: run (or print) one step, its output in $OUT/NAME.log
    local name="$1" limit="$2"; shift 2
    printf '\n== %s (%ss max) ==\n$ %s\n' "$name" "$limit" "$*"
    [[ $DRY == 1 ]] && return 0
    local t0=$SECONDS
    if ! timeout "$limit" "$@" >"$OUT/$name.log" 2>&1; then
        tail -n 30 "$OUT/$name.log"
        echo "gpu_check.sh: step $name failed or ran past ${limit}s; full output: $OUT/$name.log" >&2
        exit 1
    fi
    tail -n 8 "$OUT/$name.log"
    echo "-- $name: $((SECONDS - t0)) s (total $((SECONDS - START)) s)"
}

mkdir -p "$OUT"
cd "$REPO"

# ---- 0. the machine ---------------------------------------------------------------------------
if [[ $DRY == 0 ]]; then
    "$PY" - <<'EOF'
import sys
import torch
print(f"python {sys.version.split()[0]}, torch {torch.__version__}, CUDA {torch.version.cuda}")
for i in range(torch.cuda.device_count()):
    p = torch.cuda.get_device_properties(i)
    print(f"GPU {i}: {p.name}, {p.total_memory / 2**30:.0f} GiB, compute capability {p.major}.{p.minor}")
EOF
    if [[ $CPU == 0 ]] && ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
        echo "gpu_check.sh: no CUDA GPU visible to torch; fix: run on the GPU machine, or use --cpu" >&2
        exit 2
    fi
fi

# ---- 1. missing packages from the carried wheels -------------------------------------------------
MISSING=$("$PY" - <<'EOF'
import importlib.util
need = {  # import name -> pip name
    "transformers": "transformers>=4.47", "lightning": "lightning>=2.4", "torchmetrics": "torchmetrics>=1.4",
    "albumentations": "albumentations==2.0.*", "cv2": "opencv-python-headless>=4.8", "PIL": "pillow>=10",
    "matplotlib": "matplotlib>=3.7", "yaml": "pyyaml>=6", "safetensors": "safetensors>=0.4",
    "platformdirs": "platformdirs>=3", "tqdm": "tqdm>=4.60", "onnx": "onnx>=1.15",
    "onnxruntime": "onnxruntime>=1.17", "peft": "peft>=0.11", "pytest": "pytest>=8",
}  # peft: step 4's configs/duality_gpu.yaml puts LoRA adapters in the backbone
print(" ".join(f"'{pip}'" for mod, pip in need.items() if importlib.util.find_spec(mod) is None))
EOF
)
if [[ -n "$MISSING" ]]; then
    if [[ ! -d "$WHEELS" && $DRY == 0 ]]; then
        echo "gpu_check.sh: missing packages $MISSING and no wheels at $WHEELS; fix: prepare them with pip download (see the top of this script)" >&2
        exit 2
    fi
    eval "step install 600 $PY -m pip install --no-index --find-links '$WHEELS' $MISSING"
else
    echo "every package is installed"
fi

# ---- settings: GPU scale, or toy scale on CPU ------------------------------------------------------
CFG=configs/phase3_advanced.yaml
if [[ $CPU == 1 ]]; then
    SCALE=(model.backbone.name=dinov2_test_reg model.head.channels=16 "data.image_size=[56,98]" train.accelerator=cpu)
    SYNTH=(--n-train 4 --n-val 2 --n-test 1 --size 112x196)
    INFER=(--device cpu --no-compile --iters 3 --warmup 1)
    PRECISION=train.precision=32
    # the 2-block toy ViT: adapters in both blocks, a PPM head (UPerNet needs 4 levels)
    DUALITY=("model.backbone.layers=[0,1]" model.backbone.train_blocks=2 model.head.name=ppm)
else
    DUALITY=()
    SCALE=()
    SYNTH=(--n-train 64 --n-val 16 --n-test 1 --size 540x960)
    INFER=(--device cuda --iters 50 --warmup 10)
    PRECISION=train.precision=bf16
fi
DATA="$OUT/data"
COMMON=(data.root="$DATA" model.backbone.weights=random "${SCALE[@]}")

# ---- 2. CUDA-marked tests -------------------------------------------------------------------------
# (-m cuda selects them; without a GPU they report "skipped", which is what --cpu checks)
step cuda_tests 240 "$PY" -m pytest -q -m cuda -p no:cacheprovider tests

# ---- 3. phase 3, 2 epochs, bf16, synthetic data ----------------------------------------------------
step synth 120 "${OSEG[@]}" synth "$DATA" "${SYNTH[@]}" --overwrite --json "$OUT/synth.json"
step phase3 300 "${OSEG[@]}" train "$CFG" "${COMMON[@]}" "$PRECISION" train.epochs=2 \
    run.dir="$OUT/phase3" run.progress=false --json "$OUT/phase3.json"

step duality_gpu 300 "${OSEG[@]}" train configs/duality_gpu.yaml "${COMMON[@]}" "${DUALITY[@]}" "$PRECISION" train.epochs=2 \
    run.dir="$OUT/duality_gpu" run.progress=false --json "$OUT/duality_gpu.json"

# ---- 4. benchmarks ----------------------------------------------------------------------------------
step bench_train 300 "${OSEG[@]}" bench train "$CFG" "${COMMON[@]}" --epochs 3 \
    --work-dir "$OUT/bench_train" --json "$OUT/bench_train.json"
step bench_infer 240 "${OSEG[@]}" bench infer "$CFG" model.backbone.weights=random "${SCALE[@]}" \
    "${INFER[@]}" --json "$OUT/bench_infer.json"

# ---- 5. summary ---------------------------------------------------------------------------------------
[[ $DRY == 1 ]] && { echo; echo "(dry run: nothing was run)"; exit 0; }
"$PY" - "$OUT" <<'EOF' | tee "$OUT/summary.md"
import json, sys
from pathlib import Path

import torch

out = Path(sys.argv[1])
device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
p3 = json.loads((out / "phase3.json").read_text())
bt = json.loads((out / "bench_train.json").read_text())
bi = json.loads((out / "bench_infer.json").read_text())
dg = json.loads((out / "duality_gpu.json").read_text())
hist = p3.get("history", [])
n_train = bt["train_images"]
print(f"## GPU check on {device} (scripts/gpu_check.sh)\n")
print("| what | value | reference |\n|---|---:|---:|")
for h in hist:
    print(f"| phase 3 epoch {h['epoch']} (train + val, {n_train} train images, feature cache) "
          f"| {h['epoch_time_s']:.1f} s | |")
for h in dg.get("history", []):
    s_image = h["epoch_time_s"] / max(1, n_train)
    print(f"| configs/duality_gpu.yaml epoch {h['epoch']} (train + val, {n_train} train images, LoRA, no cache) "
          f"| {h['epoch_time_s']:.1f} s ({s_image:.3f} s/image; {s_image * 2857 / 60:.1f} min for 2857 images) | |")
base = bt["baseline_epoch_s"]
per_image = base / max(1, n_train)
print(f"| bench train baseline epoch (no cache) | {base:.1f} s ({per_image:.3f} s/image) "
      f"| RTX 3050: 10.5 min/epoch |")
print(f"| same, scaled to the 2857 Duality train images | {per_image * 2857 / 60:.1f} min | 10.5 min |")
if bt.get("speedup") is not None:
    print(f"| bench train: feature-cached epoch after the first | {bt['cached_epoch_s']:.2f} s "
          f"({bt['speedup']:.1f}x) | |")
for row in bi["results"]:
    if row["ok"] and row["median_ms"] is not None:
        print(f"| bench infer {row['mode']}, {bi['input']['height']}x{bi['input']['width']}, batch "
              f"{bi['input']['batch_size']}: median latency | {row['median_ms']:.1f} ms | 50 ms (ViT-B + PPM) |")
print(f"\nJSON: {out}/phase3.json, duality_gpu.json, bench_train.json, bench_infer.json")
EOF
echo "gpu_check.sh: done in $((SECONDS - START)) s; summary in $OUT/summary.md"
