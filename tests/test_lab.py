"""JupyterLab, as `make lab` starts it: a real server at the repository root, the "mvlip" kernel listed
through its REST API, a kernel of it started, a cell executed over the kernel's websocket (Jupyter
messaging protocol v5), and JupyterLab's page served."""

from __future__ import annotations

import importlib.util
import json
import os
import secrets
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
JUPYTER = Path(sys.executable).parent / "jupyter"
CELL = ("import os, sys, mvlip_utils\n"
        "print(mvlip_utils.__name__, sys.executable, sys.prefix, mvlip_utils.__file__, os.getcwd(), sep='\\n')")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A `jupyter lab` subprocess on localhost with a token; its REST API through urllib."""

    def __init__(self, root: Path, tmp: Path):
        self.port, self.token = free_port(), secrets.token_hex(16)
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = tmp / "jupyter-lab.log"
        # a config and runtime folder of its own (no user settings, connection files in tmp); the data
        # folder stays the user's: that is where setup_env.sh registered the kernel
        env = dict(os.environ, JUPYTER_CONFIG_DIR=str(tmp / "config"), JUPYTER_RUNTIME_DIR=str(tmp / "runtime"))
        self.log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [str(JUPYTER), "lab", "--no-browser", "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={self.port}",
             "--ServerApp.port_retries=0", f"--IdentityProvider.token={self.token}",
             f"--ServerApp.root_dir={root}", *(["--allow-root"] if os.geteuid() == 0 else [])],
            cwd=root, env=env, stdout=self.log, stderr=subprocess.STDOUT)

    def request(self, method: str, path: str, body=None, timeout: float = 10.0):
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method,
                                     headers={"Authorization": f"token {self.token}",
                                              "Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=timeout) as response:
            raw = response.read()
            kind = response.headers.get("Content-Type", "")
            return response.status, (json.loads(raw) if raw and "json" in kind else raw)

    def wait_ready(self, timeout: float = 60.0) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"jupyter lab exited with code {self.proc.returncode}:\n{self.log_tail()}")
            try:
                status, body = self.request("GET", "/api/status", timeout=2.0)
                if status == 200:
                    return body
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.25)
        raise AssertionError(f"jupyter lab did not answer /api/status within {timeout:.0f} s:\n{self.log_tail()}")

    def log_tail(self, n: int = 3000) -> str:
        self.log.flush()
        return self.log_path.read_bytes()[-n:].decode(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()  # SIGTERM: the server shuts its kernels down and exits
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.log.close()


def execute(ws_url: str, code: str, timeout: float = 60.0) -> tuple[dict, str]:
    """Run ``code`` in the kernel behind ``ws_url``: (execute_reply content, its stdout)."""
    import websocket  # websocket-client, a dependency of jupyter_server

    ws = websocket.create_connection(ws_url, timeout=timeout)
    try:
        msg_id, session = uuid.uuid4().hex, uuid.uuid4().hex
        ws.send(json.dumps({
            "header": {"msg_id": msg_id, "username": "test_lab", "session": session,
                       "msg_type": "execute_request", "version": "5.3",
                       "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())},
            "parent_header": {}, "metadata": {}, "channel": "shell", "buffers": [],
            "content": {"code": code, "silent": False, "store_history": False, "user_expressions": {},
                        "allow_stdin": False, "stop_on_error": True}}))
        stdout, reply, idle = [], None, False
        deadline = time.monotonic() + timeout
        while (reply is None or not idle) and time.monotonic() < deadline:
            msg = json.loads(ws.recv())
            if msg.get("parent_header", {}).get("msg_id") != msg_id:
                continue
            kind = msg["header"]["msg_type"]
            if kind == "stream" and msg["content"]["name"] == "stdout":
                stdout.append(msg["content"]["text"])
            elif kind == "error":
                stdout.append("\n".join(msg["content"]["traceback"]))
            elif kind == "execute_reply":
                reply = msg["content"]
            elif kind == "status" and msg["content"]["execution_state"] == "idle":
                idle = True
        assert reply is not None, f"no execute_reply within {timeout:.0f} s; output so far: {''.join(stdout)}"
        return reply, "".join(stdout)
    finally:
        ws.close()


@pytest.mark.timeout(120)
def test_jupyterlab_runs_a_cell_with_the_mvlip_kernel(tmp_path):
    assert JUPYTER.is_file() and importlib.util.find_spec("jupyterlab"), \
        "JupyterLab is not installed in this venv: run scripts/setup_env.sh (make setup)"
    server = Server(ROOT, tmp_path)
    kernel_id = None
    try:
        server.wait_ready()
        status, specs = server.request("GET", "/api/kernelspecs")
        assert status == 200 and "mvlip" in specs["kernelspecs"], \
            f"no 'mvlip' kernel (scripts/setup_env.sh registers it); kernels: {sorted(specs['kernelspecs'])}"
        assert specs["kernelspecs"]["mvlip"]["spec"]["display_name"] == "Python (mvlip)"
        # the notebooks ask for that kernel
        status, notebook = server.request("GET", "/api/contents/notebooks/02_train.ipynb")
        assert status == 200 and notebook["content"]["metadata"]["kernelspec"]["name"] == "mvlip"

        status, kernel = server.request("POST", "/api/kernels", {"name": "mvlip"})
        assert status == 201 and kernel["name"] == "mvlip"
        kernel_id = kernel["id"]
        ws_url = f"ws://127.0.0.1:{server.port}/api/kernels/{kernel_id}/channels?token={server.token}"
        reply, out = execute(ws_url, CELL)
        assert reply["status"] == "ok", out
        name, executable, prefix, module_file, cwd = out.strip().splitlines()
        assert name == "mvlip_utils"
        # the venv's python (abspath, not realpath: a venv's python is a link to the base interpreter)
        assert os.path.abspath(executable) == os.path.abspath(sys.executable) and prefix == sys.prefix
        # started at the repository root, the kernel imports this checkout's package
        assert Path(cwd) == ROOT and Path(module_file).parent == ROOT / "mvlip_utils"

        status, page = server.request("GET", "/lab")
        assert status == 200 and b"JupyterLab" in page
    finally:
        try:
            if kernel_id is not None and server.proc.poll() is None:
                server.request("DELETE", f"/api/kernels/{kernel_id}")
        finally:
            server.stop()
