"""Processes on devices: one per encoder chain, pinned to its GPU through ``CUDA_VISIBLE_DEVICES`` (the ``--gpus``
of the study and train command lines). Chains that share a device (``--gpus 0,0,1``) overlap their training, not
their timing: each holds its device's timing lock (``timing_lock``) around what publishes a throughput: the
benchmark chapter (taken by the study runner) and the training chapter's step check (``benchmark_suite``).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import tempfile
import threading
from pathlib import Path
from typing import Callable, Iterator, Mapping, Sequence

from filelock import FileLock

LOCK_ENV = "MVLIP_DEVICE_LOCK"  # the timing lock's file of this chain's device
HELD_ENV = "MVLIP_DEVICE_LOCK_HELD"  # "1" while the chain's runner holds it (its notebook must not wait for it)
SHARED_ENV = "MVLIP_DEVICE_SHARED_WITH"  # the other encoders whose chains run on this device, comma-separated


def auto_devices(n_chains: int) -> list[str] | None:
    """``--gpus auto``: chain i on visible GPU i mod their count; None (in turn) with one GPU or none."""
    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if count < 2:
        return None
    return [str(i % count) for i in range(n_chains)]


def shared_devices(encoders: Sequence[str], devices: Sequence[str]) -> dict[str, list[str]]:
    """{device: its encoders} for every device that serves more than one chain, in the order given."""
    by_device: dict[str, list[str]] = {}
    for encoder, device in zip(encoders, devices):
        by_device.setdefault(str(device), []).append(encoder)
    return {device: names for device, names in by_device.items() if len(names) > 1}


def sharing_lines(encoders: Sequence[str], devices: Sequence[str]) -> list[str]:
    """One line per shared device, for the user: what runs one at a time there."""
    lines = []
    for device, names in shared_devices(encoders, devices).items():
        who = ", ".join(names[:-1]) + f" and {names[-1]}"
        name = "The CPU" if device == "cpu" else f"GPU {device}"
        lines.append(f"{name} is shared by {who}: their benchmark chapters (and the training "
                     "chapters' step checks) run one at a time; their training epochs overlap")
    return lines


def chain_env(encoder: str, encoders: Sequence[str], devices: Sequence[str],
              lock_dir: str | os.PathLike | None = None) -> dict[str, str]:
    """The environment of ``encoder``'s chain: its device's timing lock (one file per device on this machine)
    and the encoders sharing the device."""
    device = str(devices[list(encoders).index(encoder)])
    others = [e for e, d in zip(encoders, devices) if str(d) == device and e != encoder]
    folder = Path(lock_dir) if lock_dir else Path(tempfile.gettempdir()) / "mvlip-device-locks"
    folder.mkdir(parents=True, exist_ok=True)
    return {LOCK_ENV: str(folder / f"device-{device}.lock"), SHARED_ENV: ",".join(others)}


def shared_with() -> list[str]:
    """The encoders whose chains share this chain's device (empty outside a shared chain)."""
    return [e for e in os.environ.get(SHARED_ENV, "").split(",") if e]


@contextlib.contextmanager
def timing_lock(log=None) -> Iterator[None]:
    """Hold this chain's device timing lock for the block (a no-op outside a chain or where it is held)."""
    path = os.environ.get(LOCK_ENV)
    if not path or os.environ.get(HELD_ENV) == "1":
        yield
        return
    if log is not None and shared_with():
        log(f"waiting for the timing lock of this device (shared with {', '.join(shared_with())}) ...")
    with FileLock(path):
        os.environ[HELD_ENV] = "1"  # the notebook started now inherits it: it must not wait for its runner
        try:
            yield
        finally:
            os.environ.pop(HELD_ENV, None)


def run_pinned(jobs: Mapping[str, Sequence[str]], devices: Sequence[str], cwd: str | os.PathLike,
               log: Callable[[str], None] = print, on_line: Callable[[str, str], None] | None = None,
               extra_env: Mapping[str, Mapping[str, str]] | None = None) -> list[str]:
    """Run every job (name -> command) at once, job i on ``devices[i]``; returns the names of those that failed.
    ``on_line(name, line)`` sees every output line; ``extra_env``: {name: variables} added to its environment."""
    if len(devices) != len(jobs):
        raise ValueError(f"--gpus: {len(devices)} entries for {len(jobs)} encoders {list(jobs)}; give one each")
    procs = {}
    for (name, cmd), device in zip(jobs.items(), devices):
        env = {**os.environ, "CUDA_VISIBLE_DEVICES": "" if str(device) == "cpu" else str(device),  # "cpu": no GPU
               "PYTHONUNBUFFERED": "1", **(extra_env or {}).get(name, {})}
        procs[name] = (device, subprocess.Popen(list(cmd), cwd=Path(cwd), env=env, stdout=subprocess.PIPE,
                                                stderr=subprocess.STDOUT, text=True))
    lock = threading.Lock()

    def relay(name: str, device: str, proc: subprocess.Popen) -> None:
        for line in proc.stdout:
            with lock:
                log(f"[{name} on gpu {device}] {line.rstrip()}")
                if on_line:
                    on_line(name, line.rstrip())
        proc.wait()

    threads = [threading.Thread(target=relay, args=(name, device, proc)) for name, (device, proc) in procs.items()]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    failed = [name for name, (_, proc) in procs.items() if proc.returncode != 0]
    for name in failed:
        device, proc = procs[name]
        log(f"[launch] {name} on gpu {device}: FAILED (exit {proc.returncode})")
    return failed
