"""What produced a measurement, host name left out: date, command, commit, machine, GPU, driver, versions."""

from __future__ import annotations

import datetime as _dt
import os
import platform
import shlex
import socket
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any


def versions() -> dict[str, str]:
    """Python, torch (and its CUDA), triton and the study's libraries, as installed."""
    import torch

    out = {"python": platform.python_version(), "torch_build": torch.__version__, "cuda": torch.version.cuda}
    for name in ("torch", "torchvision", "triton", "timm", "open_clip_torch", "mambavision", "numpy",
                 "scikit-learn", "scipy"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def device_description(device: Any) -> str:
    """'NVIDIA H200' for a CUDA device; 'CPU (x86_64, 2 cores)' otherwise (never the host name)."""
    import torch

    if str(device).startswith("cuda") and torch.cuda.is_available():
        dev = torch.device(device)
        return torch.cuda.get_device_name(dev if dev.index is not None else torch.cuda.current_device())
    return f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"


def git_state() -> dict[str, Any]:
    """{commit, dirty, source} of the running code: MVLIP_GIT_COMMIT/MVLIP_GIT_DIRTY ("0"/"1") if set, else git."""
    if commit := os.environ.get("MVLIP_GIT_COMMIT"):
        dirty = os.environ.get("MVLIP_GIT_DIRTY")
        return {"commit": commit, "dirty": None if dirty is None else dirty not in ("0", "false", ""),
                "source": "environment"}
    here = Path(__file__).resolve().parent
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=10)
        if head.returncode == 0 and head.stdout.strip():
            status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                                    capture_output=True, text=True, timeout=30)
            return {"commit": head.stdout.strip(), "dirty": bool(status.stdout.strip()) if status.returncode == 0
                    else None, "source": "git"}
    except (OSError, subprocess.SubprocessError):
        pass
    return {"commit": None, "dirty": None, "source": None}


def gpu_driver() -> str | None:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20)
        return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else None
    except (OSError, subprocess.SubprocessError):
        return None


def run_command() -> str:
    """MVLIP_COMMAND (set by the study runner), else this process's command line; the host name masked."""
    command = os.environ.get("MVLIP_COMMAND") or shlex.join(
        [Path(sys.argv[0]).name if sys.argv and sys.argv[0] else "python"] + sys.argv[1:])
    host = socket.gethostname()
    return command.replace(host, "<host>") if host and len(host) > 2 else command


def collect_provenance(device: Any = None) -> dict[str, Any]:
    import torch

    gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []
    git = git_state()
    return dict(date_utc=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), command=run_command(),
                git_commit=git["commit"], git_dirty=git["dirty"], python=platform.python_version(),
                os=f"{platform.system()} {platform.release()}", machine=platform.machine(), cpu_count=os.cpu_count(),
                gpus=gpus, gpu_name=gpus[0] if gpus else None, driver=gpu_driver() if gpus else None,
                device_name=device_description(device) if device is not None else None, versions=versions())
