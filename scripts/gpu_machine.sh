# Sourced by scripts/gpu_tier.sh and scripts/record_edition.sh (from the repository root): the Python to run
# (PYTHON, default python3) as $PY with the repository on PYTHONPATH; on a bare GPU machine without the
# notebook stack (no papermill or open_clip importable) the wheels in .whl/ installed into /tmp/site without
# their dependencies; the notebooks' kernel "mvlip"; MVLIP_GIT_COMMIT (the commit that runs, from git unless
# set: a copy of the working tree may have no .git, or a stale one).
PY=${PYTHON:-python3}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
if ! "$PY" -c "import papermill, open_clip" 2>/dev/null && ls .whl/*.whl >/dev/null 2>&1; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/site .whl/*.whl || exit 2
  export PYTHONPATH="/tmp/site:$PYTHONPATH"
fi
"$PY" -m ipykernel install --user --name mvlip --display-name "Python (mvlip)" >/dev/null || exit 2
export MVLIP_GIT_COMMIT="${MVLIP_GIT_COMMIT:-$(git rev-parse HEAD 2>/dev/null || echo unknown)}"
