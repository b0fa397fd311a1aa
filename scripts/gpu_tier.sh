#!/usr/bin/env bash
# The GPU test tier (README, "The GPU test tier") with its log:
#     bash scripts/gpu_tier.sh LOG [pytest arguments ...]        (make test-gpu GPU_TIER_LOG=LOG)
# runs `pytest -m gpu -q -rA` from the repository root under a time limit (GPU_TIER_TIMEOUT seconds, default
# 1200) and writes LOG: the date, the commit, the GPUs and driver (nvidia-smi), the versions, then pytest's
# output and summary. On a bare GPU machine without the notebook stack (no papermill or open_clip importable),
# the wheels in .whl/ are installed into /tmp/site first, without their dependencies, as for the speed
# edition. PYTHON picks the interpreter (default python3); MVLIP_GIT_COMMIT names the commit when the copy
# has no .git.
set -uo pipefail
log=${1:?usage: bash scripts/gpu_tier.sh LOG [pytest arguments]}
shift
case "$log" in /*) ;; *) log="$PWD/$log" ;; esac
cd "$(dirname "$0")/.." || exit 2
. scripts/gpu_machine.sh  # $PY, PYTHONPATH, the wheels on a bare GPU machine, the kernel, MVLIP_GIT_COMMIT
mkdir -p "$(dirname "$log")"
{
  echo "# GPU test tier: $PY -m pytest -m gpu -q -rA $*"
  echo "date (UTC): $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "commit: $MVLIP_GIT_COMMIT"
  nvidia-smi --query-gpu=index,name,driver_version,memory.total --format=csv 2>&1
  "$PY" - <<'PYEOF'
import platform
from importlib import metadata

import torch

print(f"python {platform.python_version()}, torch {torch.__version__} (CUDA {torch.version.cuda}), "
      f"{torch.cuda.device_count()} visible GPU(s)")
names = ("triton", "timm", "open_clip_torch", "mambavision", "papermill", "nbclient", "ipykernel", "pytest")


def version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "missing"


print(", ".join(f"{name} {version(name)}" for name in names))
PYEOF
} > "$log" 2>&1
start=$(date +%s)
timeout "${GPU_TIER_TIMEOUT:-1200}" "$PY" -m pytest -m gpu -q -rA -p no:cacheprovider "$@" 2>&1 | tee -a "$log"
rc=${PIPESTATUS[0]}
echo "pytest exit status $rc after $(( $(date +%s) - start )) s" | tee -a "$log"
exit "$rc"
