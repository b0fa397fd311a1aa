#!/usr/bin/env bash
# Record a GPU edition of the study (README, "Reproduce the paper") with its log:
#     bash scripts/record_edition.sh PROFILE LOG [study arguments ...]
# e.g. `bash scripts/record_edition.sh speed /tmp/speed.log` runs
#     python -m mvlip_utils.study --profile PROFILE --gpus auto --no-book --force [study arguments]
# from the repository root (one chain per visible GPU; one GPU: the encoders in turn), then lists what to
# commit: results/PROFILE/ (small files) and book/recorded/PROFILE/. LOG gets the date, the commit, the GPUs
# and driver, and the study's output. On a bare GPU machine without the notebook stack (no papermill or
# open_clip importable), the wheels in .whl/ are installed into /tmp/site first, without their
# dependencies. PYTHON picks the interpreter (default python3); MVLIP_GIT_COMMIT names the commit when the
# copy has no .git (or a stale one), MVLIP_GIT_DIRTY=0 declares it clean.
set -uo pipefail
profile=${1:?usage: bash scripts/record_edition.sh PROFILE LOG [study arguments]}
log=${2:?usage: bash scripts/record_edition.sh PROFILE LOG [study arguments]}
shift 2
case "$log" in /*) ;; *) log="$PWD/$log" ;; esac
cd "$(dirname "$0")/.." || exit 2
. scripts/gpu_machine.sh  # $PY, PYTHONPATH, the wheels on a bare GPU machine, the kernel, MVLIP_GIT_COMMIT
command=("$PY" -m mvlip_utils.study --profile "$profile" --gpus auto --no-book --force "$@")
export MVLIP_COMMAND="python -m mvlip_utils.study --profile $profile --gpus auto --no-book --force${*:+ $*}"
mkdir -p "$(dirname "$log")"
{
  echo "# record the $profile edition: ${command[*]}"
  echo "date (UTC): $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "commit: $MVLIP_GIT_COMMIT (dirty: ${MVLIP_GIT_DIRTY:-from git})"
  nvidia-smi --query-gpu=index,name,driver_version,memory.total --format=csv 2>&1
} > "$log" 2>&1
start=$(date +%s)
"${command[@]}" 2>&1 | tee -a "$log"
rc=${PIPESTATUS[0]}
echo "study exit status $rc after $(( $(date +%s) - start )) s (a GPU profile: commit results/$profile/ and book/recorded/$profile/)" | tee -a "$log"
exit "$rc"
