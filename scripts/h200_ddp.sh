#!/usr/bin/env bash
# One epoch on 1 GPU, then the same epoch through torchrun on NPROC GPUs (DDP, global batch 32), on the same
# generated ImageNet-mini-shaped data; writes one_gpu.json, ddp.json and speedup.json to $OUT.
#
#   ENCODERS=swin,vit NPROC=2 bash scripts/h200_ddp.sh        (on a 2-GPU machine, from the repository root)
#   SMOKE=1 NPROC=2 bash scripts/h200_ddp.sh                   (the CPU: tiny towers, gloo)
set -euo pipefail
cd "$(dirname "$0")/.."
ENCODERS=${ENCODERS:-mambavision,swin,vit}
NPROC=${NPROC:-2}
OUT=${OUT:-h200_ddp_out}
WORK=${WORK:-$(mktemp -d -t mvlip_ddp_XXXX)}
PY=${PY:-python3}
EXTRA=()
if [[ -n "${SMOKE:-}" ]]; then EXTRA=(--smoke); fi
mkdir -p "$OUT"
echo "[h200_ddp] encoders=$ENCODERS nproc=$NPROC work=$WORK out=$OUT"
$PY scripts/h200_epoch.py "${EXTRA[@]}" --data-only --workdir "$WORK" --out "$OUT"
$PY scripts/h200_epoch.py "${EXTRA[@]}" --data "$WORK/data" --workdir "$WORK/one" --encoders "$ENCODERS" \
    --out "$OUT/one_gpu.json" 2>&1 | tee "$OUT/one_gpu_log.txt"
$PY -m torch.distributed.run --standalone --nnodes=1 --nproc_per_node="$NPROC" scripts/h200_epoch.py "${EXTRA[@]}" \
    --data "$WORK/data" --workdir "$WORK/ddp" --encoders "$ENCODERS" --out "$OUT/ddp.json" 2>&1 | tee "$OUT/ddp_log.txt"
$PY scripts/h200_epoch.py --compare "$OUT/one_gpu.json" "$OUT/ddp.json" | tee "$OUT/speedup.json"
