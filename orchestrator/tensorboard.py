"""TensorBoard beside a run, as the seed's recipe runs it beside the ranks (``netorch run
--tensorboard``).

The run's ``<output>/<run_id>/tensorboard`` folder is every node's TensorBoard log directory: the
same path in every container (:data:`IN_NODE_DIR`, bind-mounted read-write and handed to the
containers' user like the checkpoint folder) or the host folder itself on the process backend;
``NETORCH_TENSORBOARD_DIR`` names it in every rank. TensorBoard (the PyPI package, on the host)
serves that folder on 127.0.0.1 from before the nodes start; after the run it keeps serving
until Ctrl-C (``run.tensorboard_keep``). The server is a child process that is always stopped
(terminate, then kill) and waited for.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from orchestrator.errors import ConfigError

IN_NODE_DIR = "/netorch/tensorboard"
ENV_VAR = "NETORCH_TENSORBOARD_DIR"
READY_TIMEOUT_S = 90.0


class TensorBoard:
    """One TensorBoard server process on 127.0.0.1 serving ``logdir``."""

    def __init__(self, logdir: Path, port: int) -> None:
        self.logdir = logdir
        self.port = port
        self.url = f"http://127.0.0.1:{port}/"
        self.log = logdir.parent / "tensorboard.log"
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self) -> str:
        """Start the server and wait until it answers; return its URL.

        Raises ConfigError (nothing of the run exists yet) when TensorBoard is not installed, or
        it exits or does not answer (a port in use, typically)."""
        if importlib.util.find_spec("tensorboard") is None:
            raise ConfigError("--tensorboard: the tensorboard package is not installed on this "
                              "host; pip install 'netorch[tensorboard]' (or tensorboard)")
        self.logdir.mkdir(parents=True, exist_ok=True)
        with self.log.open("wb") as fh:
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "tensorboard.main", "--logdir", str(self.logdir),
                 "--host", "127.0.0.1", "--port", str(self.port), "--reload_interval", "1"],
                stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True,  # Ctrl-C in the terminal is netorch's to handle
            )
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                tail = self.log.read_text(errors="replace").strip().splitlines()[-1:]
                self._proc = None
                raise ConfigError(
                    f"run.tensorboard_port {self.port}: TensorBoard exited "
                    f"({' '.join(tail) or 'no output'}); choose a free port with "
                    "--set run.tensorboard_port=N")
            try:
                with urllib.request.urlopen(self.url + "data/logdir", timeout=1):
                    return self.url
            except OSError:
                time.sleep(0.2)
        self.stop()
        raise ConfigError(f"run.tensorboard_port {self.port}: TensorBoard did not answer within "
                          f"{READY_TIMEOUT_S:.0f} s; see {self.log}")

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def stop(self) -> None:
        """Stop the server and wait for it (idempotent)."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def serve_until_interrupted(self) -> None:
        """Block until Ctrl-C (or the server ends by itself), then stop it."""
        try:
            while self.running:
                time.sleep(0.5)
        finally:
            self.stop()
