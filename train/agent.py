"""A warm node: torch imported once, idle until the host drops a job in a spool folder. ``python -m train.agent``.

``netorch up`` starts one agent per container; each later run forks fresh ranks from it in
milliseconds instead of starting a container and importing torch again. Command line::

    python -P -m train.agent SPOOL_DIR [--idle-timeout SECONDS]

The agent imports ``torch`` and ``torch.distributed`` (never CUDA), creates SPOOL_DIR, prints
``netorch-agent: ready (torch X.Y, pid N)`` and polls SPOOL_DIR every POLL_S seconds.

Protocol (files in SPOOL_DIR, ID = ``[A-Za-z0-9_.-]{1,64}``):

* ``ID.job``, written by the host: JSON ``{"argv": [...], "env": {...}, "cwd": "/path" | null}``.
  ``argv`` is exactly what ``python -m train.launch`` takes; ``env`` (optional) is set on top of the
  agent's environment for this job only; ``cwd`` (optional) is the job's working directory. A file
  whose JSON does not parse may be half written: it is read again at the next poll, and rejected
  once it has stayed unparseable and unchanged for PARTIAL_GRACE_S (the host should write
  ``ID.job.tmp`` and rename it, which makes this moot).
* Jobs run one at a time, in name order. The agent renames ``ID.job`` to ``ID.running`` (removing a
  stale ``ID.exit`` of an earlier job with this ID), prints ``@@NETORCH_JOB_START@@ {"job": "ID"}``
  and forks a *job child* that applies env and cwd and calls :func:`train.launch.run`, so the job
  behaves exactly as ``python -m train.launch ARGV`` would, ranks forked anew (a fresh process group,
  and NCCL_*/GLOO_* from ``env`` read afresh). When the job child ends, the agent writes ``ID.exit``
  (the exit code as text, atomically), renames ``ID.running`` to ``ID.done``, removes ``ID.cancel``
  and prints ``@@NETORCH_JOB_EXIT@@ {"job": "ID", "code": N}``. N is the launcher's code (the first
  failed rank's, 128+S for a rank killed by signal S), or 128+S when the job child itself died of S.
* ``ID.cancel``, written by the host while ID runs: SIGTERM to the job child (which forwards it to
  its ranks), then SIGKILL to the job's whole process group after GRACE_S. When ``ID.cancel``
  already exists as ID is picked up, the job does not start and exits 128+SIGTERM.
* A bad job (ID not matching, unknown keys, wrong types, argv that train.launch rejects, JSON still
  broken after the grace) prints one ``netorch-agent: job ID: REASON`` line and gets exit code 2
  (``ID.exit`` and the EXIT marker, no START marker); the agent carries on.

Every process of a job is in the job child's process group, and that group is SIGKILLed when the
job ends, so nothing a job left behind outlives it. The job child and its ranks die with the agent
(PR_SET_PDEATHSIG), even if the agent is SIGKILLed. The job's output is the agent's stdout/stderr.

Idle timeout (default 3600 s, 0 = never): with no job running or queued for that long, the agent
prints ``netorch-agent: idle for N s, exiting`` and exits 0. SIGTERM, SIGINT, SIGHUP and SIGQUIT
are forwarded to a running job child; the agent waits GRACE_S for it (then SIGKILLs its group),
reports its exit as usual, and exits 128+signal.

Known difference from a cold ``python -m train.launch``: settings read once when torch loads (other
than OMP_NUM_THREADS, applied with ``torch.set_num_threads``) come from the agent's environment,
not the job's, and ``PYTHONPATH`` in ``env`` does not change ``sys.path``.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import re
import select
import signal
import sys
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import NoReturn, TextIO

from train.launch import FORWARDED, LaunchSpec, _die_with_parent, exit_now, parse_args, run

POLL_S = 0.02  # spool poll period, and the agent's reaction time to a cancel or a signal
GRACE_S = 3.0  # between SIGTERM to a job child and SIGKILL of its process group
PARTIAL_GRACE_S = 5.0  # an unparseable .job unchanged for this long is broken, not half written
DEFAULT_IDLE_TIMEOUT_S = 3600.0
BAD_JOB_CODE = 2  # as train.launch exits for a command line it rejects

JOB, RUNNING, DONE, EXIT, CANCEL = ".job", ".running", ".done", ".exit", ".cancel"
START_MARKER = "@@NETORCH_JOB_START@@"
EXIT_MARKER = "@@NETORCH_JOB_EXIT@@"
JOB_ID = re.compile(r"[A-Za-z0-9_.-]{1,64}")
JOB_KEYS = frozenset({"argv", "env", "cwd"})

_Handler = Callable[[int, FrameType | None], object] | int | signal.Handlers | None


class BadJob(ValueError):
    """A job file the agent refuses to run; ``str(e)`` is the reason printed for the host."""


@dataclass(frozen=True)
class JobRequest:
    """One parsed ``ID.job`` file."""

    job_id: str
    spec: LaunchSpec
    env: tuple[tuple[str, str], ...]  # set on top of the agent's environment, in this order
    cwd: str | None


def parse_job(job_id: str, text: str) -> JobRequest:
    """Parse the content of ``<job_id>.job``.

    Raises ``json.JSONDecodeError`` when ``text`` is not JSON (perhaps not fully written yet) and
    :class:`BadJob` when it is JSON the agent will not run.
    """
    if not JOB_ID.fullmatch(job_id):
        raise BadJob(f"job ID {job_id!r} must match {JOB_ID.pattern}")
    doc = json.loads(text)
    if not isinstance(doc, dict):
        raise BadJob(f"the job file must hold a JSON object, not {type(doc).__name__}")
    unknown = sorted(set(doc) - JOB_KEYS)
    if unknown:
        raise BadJob(f"unknown key(s) {', '.join(map(repr, unknown))}; a job has {', '.join(sorted(JOB_KEYS))}")
    argv = doc.get("argv")
    if not isinstance(argv, list) or not all(isinstance(a, str) for a in argv):
        raise BadJob(f"'argv' must be a list of strings (train.launch's arguments), not {argv!r}")
    env = doc.get("env") or {}
    if not isinstance(env, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in env.items()):
        raise BadJob(f"'env' must map names to string values, not {env!r}")
    if any(not k or "=" in k or "\0" in k or "\0" in v for k, v in env.items()):
        raise BadJob("'env' names must be non-empty without '=' or NUL, and values without NUL")
    cwd = doc.get("cwd")
    if cwd is not None and (not isinstance(cwd, str) or not cwd):
        raise BadJob(f"'cwd' must be a directory path or null, not {cwd!r}")
    return JobRequest(job_id=job_id, spec=_parse_launch_argv(argv), env=tuple(env.items()), cwd=cwd)


def _parse_launch_argv(argv: Sequence[str]) -> LaunchSpec:
    """train.launch's own parser, with its usage message turned into a BadJob instead of an exit."""
    said = io.StringIO()
    try:
        with contextlib.redirect_stderr(said), contextlib.redirect_stdout(said):
            return parse_args(argv)
    except SystemExit:
        lines = [line for line in said.getvalue().splitlines() if line.strip()]
        raise BadJob(f"invalid launcher argv {list(argv)!r}: {lines[-1] if lines else 'rejected'}") from None


def _say(line: str, stream: TextIO | None = None) -> None:
    print(line, file=stream or sys.stdout, flush=True)


def _marker(marker: str, **fields: object) -> None:
    _say(f"{marker} {json.dumps(fields)}")


def _thread_count(spec: LaunchSpec) -> int | None:
    """The OpenMP thread count a cold launcher's ranks would get, when it is known from the environment.

    OpenMP read OMP_NUM_THREADS when the agent imported torch; run() sets the variable too late.
    """
    value = os.environ.get("OMP_NUM_THREADS", "1" if spec.nproc_per_node > 1 else "")
    return int(value) if value.isdigit() and int(value) > 0 else None


class Agent:
    """The spool's one reader: picks jobs in name order, runs each in a job child, reports its exit."""

    def __init__(self, spool: Path, idle_timeout: float) -> None:
        self.spool = spool
        self.idle_timeout = idle_timeout
        self.signalled: int | None = None
        self.pid = os.getpid()
        self.child_handlers: dict[int, _Handler] = {}
        self.unparseable: dict[str, tuple[tuple[int, int], float]] = {}  # ID -> ((size, mtime), since)

    def install_handlers(self) -> None:
        """Catch FORWARDED (keeping an ignored one ignored); job children get the original handlers back."""
        for sig in FORWARDED:
            self.child_handlers[sig] = signal.getsignal(sig)
            if self.child_handlers[sig] is not signal.SIG_IGN:
                signal.signal(sig, self._on_signal)

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        if self.signalled is None:
            self.signalled = signum

    def _path(self, job_id: str, suffix: str) -> Path:
        return self.spool / f"{job_id}{suffix}"

    def serve(self) -> int:
        """Run jobs until the idle timeout (return 0) or a signal (return 128+signal)."""
        last_busy = time.monotonic()
        while self.signalled is None:
            try:
                queued = sorted(p.name[: -len(JOB)] for p in self.spool.iterdir() if p.name.endswith(JOB))
            except OSError:  # removed under the agent's feet: make it again, keep serving
                with contextlib.suppress(OSError):
                    self.spool.mkdir(parents=True, exist_ok=True)
                queued = []
            if queued:
                self._take(queued[0])
                last_busy = time.monotonic()
            elif self.idle_timeout and time.monotonic() - last_busy >= self.idle_timeout:
                _say(f"netorch-agent: idle for {self.idle_timeout:g} s, exiting")
                return 0
            else:
                time.sleep(POLL_S)
        _say(f"netorch-agent: received {signal.Signals(self.signalled).name}; exiting", sys.stderr)
        return 128 + self.signalled

    def _take(self, job_id: str) -> None:
        """Run, reject or (if half written) leave for the next poll the queue's first job."""
        path = self._path(job_id, JOB)
        try:
            st = path.stat()
            text = path.read_text(encoding="utf-8", errors="replace")
            job = parse_job(job_id, text)
        except FileNotFoundError:
            return  # withdrawn by the host between listing and reading
        except (IsADirectoryError, PermissionError) as e:
            self._reject(job_id, f"cannot read {path.name}: {e.strerror}")
        except json.JSONDecodeError as e:
            seen = (st.st_size, st.st_mtime_ns)
            before, since = self.unparseable.get(job_id, (seen, time.monotonic()))
            if before != seen:  # still being written
                since = time.monotonic()
            self.unparseable[job_id] = (seen, since)
            if time.monotonic() - since < PARTIAL_GRACE_S:
                time.sleep(POLL_S)
                return
            self._reject(job_id, f"not valid JSON after {PARTIAL_GRACE_S:g} s unchanged: {e}")
        except BadJob as e:
            self._reject(job_id, str(e))
        except (OSError, ValueError, RecursionError) as e:  # anything else a file can do to a reader
            self._reject(job_id, f"cannot read {path.name}: {e!r}")
        else:
            self._run(job)
        self.unparseable.pop(job_id, None)

    def _reject(self, job_id: str, reason: str) -> None:
        _say(f"netorch-agent: job {job_id}: {reason}", sys.stderr)
        self._finish(job_id, JOB, BAD_JOB_CODE)

    def _finish(self, job_id: str, state: str, code: int) -> None:
        """Publish ``code`` for ``job_id`` (whose spec is now ``ID<state>``) and clear its files."""
        exit_path = self._path(job_id, EXIT)
        try:
            tmp = self._path(job_id, EXIT + ".tmp")
            tmp.write_text(f"{code}\n")
            os.replace(tmp, exit_path)
            os.replace(self._path(job_id, state), self._path(job_id, DONE))
        except OSError as e:  # e.g. an ID too long for one more character: say so, keep serving
            _say(f"netorch-agent: job {job_id}: cannot record exit code {code}: {e}", sys.stderr)
            with contextlib.suppress(OSError):
                self._path(job_id, state).unlink()  # never run it twice
        with contextlib.suppress(OSError):
            self._path(job_id, CANCEL).unlink()
        _marker(EXIT_MARKER, job=job_id, code=code)

    def _run(self, job: JobRequest) -> None:
        job_id = job.job_id
        for stale in (EXIT, DONE):  # an earlier job's result, when the host reuses an ID
            with contextlib.suppress(FileNotFoundError):
                self._path(job_id, stale).unlink()
        if self._path(job_id, CANCEL).exists():
            _say(f"netorch-agent: job {job_id}: cancelled before it started", sys.stderr)
            self._finish(job_id, JOB, 128 + signal.SIGTERM)
            return
        os.replace(self._path(job_id, JOB), self._path(job_id, RUNNING))
        _marker(START_MARKER, job=job_id)
        try:
            pid = self._fork(job)
        except OSError as e:  # out of processes or memory: this job fails, the agent stays
            _say(f"netorch-agent: job {job_id}: cannot fork its job child: {e.strerror}", sys.stderr)
            self._finish(job_id, RUNNING, 1)
            return
        self._finish(job_id, RUNNING, self._supervise(job, pid))

    def _fork(self, job: JobRequest) -> int:
        """Fork the job child, in a process group of its own, with FORWARDED held until it is set up."""
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, FORWARDED)
        try:
            pid = os.fork()
            if pid == 0:
                _job_child(job, self.pid, self.child_handlers, mask)
            with contextlib.suppress(OSError):  # also in the child: whichever runs first
                os.setpgid(pid, pid)
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        return pid

    def _supervise(self, job: JobRequest, pid: int) -> int:
        """Wait for the job child, relaying a cancel or the agent's signal; return the job's exit code."""
        exited = _ExitWaiter(pid)
        try:
            return self._wait_job(job, pid, exited)
        finally:
            exited.close()

    def _wait_job(self, job: JobRequest, pid: int, exited: _ExitWaiter) -> int:
        kill_at: float | None = None  # set once the job child was asked to stop
        while (status := _reap(pid)) is None:
            if kill_at is None and (self.signalled is not None or self._path(job.job_id, CANCEL).exists()):
                sig = signal.SIGTERM if self.signalled is None else signal.Signals(self.signalled)
                why = "cancel requested" if self.signalled is None else f"agent received {sig.name}"
                _say(f"netorch-agent: job {job.job_id}: {why}; sending {sig.name}", sys.stderr)
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)  # the job child forwards it to its ranks, as the launcher does
                kill_at = time.monotonic() + GRACE_S
            elif kill_at is not None and time.monotonic() >= kill_at:
                _say(f"netorch-agent: job {job.job_id}: still running {GRACE_S:g} s after the signal; "
                     "killing its process group", sys.stderr)
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pid, signal.SIGKILL)
                kill_at = float("inf")
            exited.wait(POLL_S)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)  # whatever the job left behind in its group
        code = os.waitstatus_to_exitcode(status)
        return 128 - code if code < 0 else code


class _ExitWaiter:
    """Sleeps of at most N seconds that end as soon as child ``pid`` ends (a Linux pidfd).

    Without pidfd support (old kernel, no ``os.pidfd_open``) they are plain sleeps; the caller
    polls either way, the pidfd only takes the poll's latency off the end of a job.
    """

    def __init__(self, pid: int) -> None:
        try:
            self.fd: int | None = os.pidfd_open(pid)
        except (AttributeError, OSError):
            self.fd = None

    def wait(self, timeout: float) -> None:
        if self.fd is None:
            time.sleep(timeout)
            return
        ready, _, _ = select.select([self.fd], [], [], timeout)
        if ready:  # it stays readable until reaped: sleep from now on rather than spin
            self.close()

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def _reap(pid: int) -> int | None:
    """Reap every ended child (the agent may be a container's PID 1); return ``pid``'s status if it ended."""
    found: int | None = None
    while True:
        try:
            child, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return found
        if child == 0:
            return found
        if child == pid:
            found = status


def _job_child(job: JobRequest, agent: int, handlers: Mapping[int, _Handler],
               mask: set[int | signal.Signals]) -> NoReturn:
    """The forked job child: become ``python -m train.launch ARGV`` with the job's env and cwd; never return."""
    code = 1
    try:
        with contextlib.suppress(OSError):
            os.setpgid(0, 0)
        _die_with_parent(agent)
        for sig, handler in handlers.items():  # python's own, as a cold launcher and its ranks start with
            if handler is not None:
                signal.signal(sig, handler)
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        os.environ.update(job.env)
        try:
            if job.cwd is not None:
                os.chdir(job.cwd)
        except OSError as e:
            _say(f"netorch-agent: job {job.job_id}: cannot use cwd {job.cwd!r}: {e.strerror}", sys.stderr)
            code = BAD_JOB_CODE
        else:
            threads = _thread_count(job.spec)
            if threads is not None and "torch" in sys.modules:
                sys.modules["torch"].set_num_threads(threads)
            code = run(job.spec)
    except BaseException:
        traceback.print_exc()
    finally:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(OSError, ValueError):
                stream.flush()
        os._exit(code)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m train.agent",
                                description="a warm node: torch imported once, jobs from a spool folder")
    p.add_argument("spool", type=Path, help="folder the host writes ID.job (and ID.cancel) files into")
    p.add_argument("--idle-timeout", type=float, default=DEFAULT_IDLE_TIMEOUT_S,
                   help="exit 0 after this many seconds without a job (0: never; default %(default)g)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Import torch, then serve the spool folder; return the agent's exit code."""
    p = _parser()
    ns = p.parse_args(sys.argv[1:] if argv is None else argv)
    if ns.idle_timeout < 0:
        p.error(f"--idle-timeout {ns.idle_timeout:g}: must be >= 0 (0 means never)")
    if isinstance(sys.stdout, io.TextIOWrapper):
        sys.stdout.reconfigure(line_buffering=True)  # the host follows this stream live
    try:
        ns.spool.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        _say(f"netorch-agent: cannot create spool folder {str(ns.spool)!r}: {e.strerror}", sys.stderr)
        return 1
    # The one import of the node. Nothing here may create a CUDA context: job children fork after it.
    try:
        import torch
        import torch.distributed  # noqa: F401
    except ImportError as e:
        _say(f"netorch-agent: cannot import torch ({e}); install it in this image", sys.stderr)
        return 1
    # What netorch's own workloads import besides torch, once here rather than in every job (the
    # launcher keeps loaded ``train`` modules unless the job's path shadows the package). Not the
    # workload modules themselves: runpy runs those afresh as __main__.
    import train.contract  # noqa: F401
    import train.env  # noqa: F401
    import train.results  # noqa: F401
    agent = Agent(ns.spool, ns.idle_timeout)
    agent.install_handlers()
    version = ".".join(str(torch.__version__).split("+")[0].split(".")[:2])
    _say(f"netorch-agent: ready (torch {version}, pid {os.getpid()})")
    return agent.serve()


if __name__ == "__main__":
    exit_now(main())
