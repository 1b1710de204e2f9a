"""A model server in a child process on 127.0.0.1: for the tests, the benchmark and ``make serve``.

    with ServerProcess(registry_uri) as server:   # starts it and waits until the model is ready
        server.infer_url                          # http://127.0.0.1:<port>/v2/models/privacy-intent/infer

Runs ``python -m privacy_pipeline.cli serve`` with the interpreter of the
serving environment (default: this one), so the server is exactly what the
CLI starts. It imports nothing of the server itself, so the stage environment
(``make bench``) can use it with ``python=".venv/serving/bin/python"``. The
server's output goes to ``log_path`` (default: a temporary file), never to a
pipe, so a chatty server cannot block on a full one.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

from privacy_pipeline.serving.contract import MODEL_NAME
from privacy_pipeline.serving.page import PAGE_PATH

HOST = "127.0.0.1"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


class ServerNotReady(RuntimeError):
    """The server exited or did not become ready; the message carries its last log lines."""


class ServerProcess:
    def __init__(
        self,
        registry_uri: str,
        *,
        version: str | None = None,
        port: int | None = None,
        extra_args: Sequence[str] = (),
        global_args: Sequence[str] = (),
        python: str = sys.executable,
        env: dict[str, str] | None = None,
        log_path: Path | None = None,
        ready_timeout: float = 300.0,
    ) -> None:
        self.registry_uri = registry_uri
        self.version = version
        self.port = port or free_port()
        self.extra_args = list(extra_args)
        self.global_args = list(global_args)
        self.python = python
        self.env = env
        self.log_path = log_path or Path(tempfile.mkstemp(prefix="privacy-intent-serve-", suffix=".log")[1])
        self.ready_timeout = ready_timeout
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def infer_url(self) -> str:
        return f"{self.url}/v2/models/{MODEL_NAME}/infer"

    @property
    def page_url(self) -> str:
        return f"{self.url}{PAGE_PATH}"

    def command(self) -> list[str]:
        command = [self.python, "-m", "privacy_pipeline.cli", *self.global_args, "serve"]
        command += ["--registry", self.registry_uri, "--host", HOST, "--port", str(self.port)]
        if self.version is not None:
            command += ["--version", self.version]
        return command + self.extra_args

    def log_tail(self, lines: int = 30) -> str:
        if not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])

    def start(self) -> ServerProcess:
        env = {**os.environ, **(self.env or {}), "HF_HUB_OFFLINE": "1"}
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT, env=env)
        return self

    def wait_ready(self) -> None:
        """Until the model answers ready; ServerNotReady if the process exits first or time runs out."""
        assert self.process is not None, "start() first"
        deadline = time.monotonic() + self.ready_timeout
        ready_url = f"{self.url}/v2/models/{MODEL_NAME}/ready"
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise ServerNotReady(
                    f"the server exited with code {self.process.returncode} before it was ready:\n{self.log_tail()}"
                )
            try:
                with urllib.request.urlopen(ready_url, timeout=2) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.25)
        raise ServerNotReady(f"the server was not ready within {self.ready_timeout:.0f}s:\n{self.log_tail()}")

    def wait_exit(self, timeout: float | None) -> int:
        assert self.process is not None, "start() first"
        return self.process.wait(timeout)

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM, then SIGKILL after ``timeout``; the exit code."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode

    def __enter__(self) -> ServerProcess:
        self.start()
        try:
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.stop()
