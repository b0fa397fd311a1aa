#!/usr/bin/env bash
# Set up everything the MVLIP study needs on a fresh machine (Debian, Python 3.11, root or sudo).
# Idempotent: every step checks first and is skipped when already done, so a second run takes seconds.
#
#   1. a virtual environment in .venv (created if missing)
#   2. torch==2.14.1 and torchvision==0.29.1 (pip takes them from this machine's local wheel store)
#   3. the project itself, editable, with its test and JupyterLab extras:  pip install -e .[test,lab]
#   4. mambavision==1.2.0 without its dependencies (they pin old timm/transformers and a CUDA-only mamba-ssm;
#      mvlip_utils.models.ssm supplies the selective scan instead)
#   5. a Jupyter kernel named "mvlip" that runs this venv's python (for JupyterLab and papermill)
#   6. Debian's chromium and chromium-driver, for the browser test of the built book
#
# Environment: PYTHON (interpreter to build the venv from, default python3.11 or python3),
#              MVLIP_SKIP_BROWSER=1 to skip step 6.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$(pwd)"
VENV="$ROOT/.venv"
VPY="$VENV/bin/python"
STAMP="$VENV/.mvlip-setup"
TORCH_VERSION=2.14.1
TORCHVISION_VERSION=0.29.1
MAMBAVISION_VERSION=1.2.0

t0=$SECONDS
step() { printf '[setup %4ds] %s\n' "$((SECONDS - t0))" "$*"; }

# 1. venv ---------------------------------------------------------------------------------------------
if [ ! -x "$VPY" ]; then
    PYTHON="${PYTHON:-$(command -v python3.11 || command -v python3)}"
    step "creating .venv with $PYTHON ($("$PYTHON" --version 2>&1))"
    "$PYTHON" -m venv "$VENV"
else
    step ".venv exists ($("$VPY" --version 2>&1))"
fi
PIP_LOG="$VENV/.mvlip-pip.log"
# pip's output goes to a log (build back-ends are chatty); on failure its tail is shown
pip_install() {
    if ! "$VPY" -m pip install --quiet "$@" >"$PIP_LOG" 2>&1; then
        tail -n 40 "$PIP_LOG" >&2
        echo "setup_env.sh: 'pip install $*' failed (full log: $PIP_LOG)" >&2
        exit 1
    fi
}

# 2. torch + torchvision ----------------------------------------------------------------------------
if "$VPY" - "$TORCH_VERSION" "$TORCHVISION_VERSION" 2>/dev/null <<'EOF'
import sys
from importlib.metadata import version
ok = version("torch").split("+")[0] == sys.argv[1] and version("torchvision").split("+")[0] == sys.argv[2]
sys.exit(0 if ok else 1)
EOF
then
    step "torch $TORCH_VERSION and torchvision $TORCHVISION_VERSION already installed"
else
    step "installing torch==$TORCH_VERSION torchvision==$TORCHVISION_VERSION (several GB, from the local wheel store)"
    pip_install "torch==$TORCH_VERSION" "torchvision==$TORCHVISION_VERSION"
fi

# 3. the project, editable, with the test and lab (JupyterLab) extras ----------------------------------
# The stamp records the hash of pyproject.toml and where the package is installed from; a change to
# either (a new dependency, a fresh clone in another folder) triggers a reinstall.
want="$(sha256sum pyproject.toml | cut -d' ' -f1) $ROOT"
have="$(cat "$STAMP" 2>/dev/null || true)"
if [ "$want" = "$have" ] && "$VPY" -c "import mvlip_utils, selenium, pytest, papermill, jupyterlab" 2>/dev/null; then
    step "mvlip_utils (editable) and its dependencies already installed"
else
    step "installing the project: pip install -e .[test,lab]"
    pip_install -e ".[test,lab]"
    echo "$want" > "$STAMP"
fi

# 4. mambavision without its pinned dependencies ------------------------------------------------------
if [ "$("$VPY" -c 'from importlib.metadata import version; print(version("mambavision"))' 2>/dev/null)" = "$MAMBAVISION_VERSION" ]; then
    step "mambavision $MAMBAVISION_VERSION already installed"
else
    step "installing mambavision==$MAMBAVISION_VERSION --no-deps"
    pip_install --no-deps "mambavision==$MAMBAVISION_VERSION"
fi

# 5. Jupyter kernel "mvlip" pointing at this venv's python ----------------------------------------------
if "$VPY" - "$VPY" 2>/dev/null <<'EOF'
import os, sys
from jupyter_client.kernelspec import KernelSpecManager
spec = KernelSpecManager().get_kernel_spec("mvlip")
# abspath, not realpath: every venv's python is a symlink to the same base interpreter
sys.exit(0 if os.path.abspath(spec.argv[0]) == os.path.abspath(sys.argv[1]) else 1)
EOF
then
    step "Jupyter kernel 'mvlip' already registered for this venv"
else
    step "registering the Jupyter kernel 'mvlip' for $VPY"
    "$VPY" -m ipykernel install --user --name mvlip --display-name "Python (mvlip)" >/dev/null
fi

# 6. Debian chromium + chromedriver for the browser test ------------------------------------------------
if [ "${MVLIP_SKIP_BROWSER:-0}" = "1" ]; then
    step "MVLIP_SKIP_BROWSER=1: not installing chromium"
elif command -v chromium >/dev/null && [ -x /usr/bin/chromedriver ]; then
    step "chromium and chromedriver already installed ($(chromium --version 2>/dev/null | head -n1))"
else
    SUDO=""
    if [ "$(id -u)" -ne 0 ]; then
        if command -v sudo >/dev/null; then SUDO="sudo"; else
            echo "setup_env.sh: chromium is missing and we are not root (no sudo): install Debian's" \
                 "'chromium' and 'chromium-driver' packages to run the browser test" >&2
            exit 1
        fi
    fi
    step "installing Debian's chromium and chromium-driver (apt-get)"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
        chromium chromium-driver fonts-dejavu-core >/dev/null
fi

step "done"
