"""One process per encoder, each pinned to its GPU through ``CUDA_VISIBLE_DEVICES`` (the ``--gpus`` of the
study and train command lines); output lines are relayed with the job's name, failing jobs named at the end."""

from __future__ import annotations

import os
import subprocess
import threading
from pathlib import Path
from typing import Callable, Mapping, Sequence


def run_pinned(jobs: Mapping[str, Sequence[str]], devices: Sequence[str], cwd: str | os.PathLike,
               log: Callable[[str], None] = print, on_line: Callable[[str, str], None] | None = None,
               extra_env: Mapping[str, Mapping[str, str]] | None = None) -> list[str]:
    """Run every job (name -> command) at once, job i on ``devices[i]``; returns the names of those that failed.
    ``on_line(name, line)`` sees every output line; ``extra_env``: {name: variables} added to its environment."""
    if len(devices) != len(jobs):
        raise ValueError(f"--gpus: {len(devices)} entries for {len(jobs)} encoders {list(jobs)}; give one each")
    extra_env = extra_env or {}
    procs = {}
    for (name, cmd), device in zip(jobs.items(), devices):
        env = {**os.environ, "CUDA_VISIBLE_DEVICES": "" if str(device) == "cpu" else str(device),  # "cpu": no GPU
               "PYTHONUNBUFFERED": "1", **extra_env.get(name, {})}
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
