"""In-node launcher that imports torch once and forks the node's ranks: ``python -m train.launch``.

torchrun's agent imports torch, then every worker is a fresh ``python`` that imports it again. Here
the launcher imports ``torch`` and ``torch.distributed`` once (never touching CUDA, so the children
may still use it) and ``os.fork()``s the ranks, which inherit the loaded modules.

Command line: the torchrun subset netorch's plan uses, so ``torchrun ARGS`` becomes
``python -m train.launch ARGS``::

    python -m train.launch --nnodes N --nproc-per-node P --node-rank R --master-addr A --master-port PORT
        [--max-restarts 0] [--run-id ID | --rdzv-id ID] [--role default]
        (-m MODULE | SCRIPT.py | --no-python CMD) [ARGS...]

Underscore spellings (``--nproc_per_node``) are accepted, as torchrun accepts them. ``--nnodes`` is a
fixed count (``N`` or ``N:N``); ``--nproc-per-node`` an integer; ``--max-restarts`` must be 0
(netorch restarts the whole gang instead, see ``NETORCH_RESTART_COUNT``).

Each rank gets the environment torchrun's static rendezvous gives a worker (the launcher's own
environment plus RANK, LOCAL_RANK, GROUP_RANK, ROLE_RANK, ROLE_NAME, LOCAL_WORLD_SIZE, WORLD_SIZE,
GROUP_WORLD_SIZE, ROLE_WORLD_SIZE, MASTER_ADDR, MASTER_PORT, TORCHELASTIC_RESTART_COUNT,
TORCHELASTIC_MAX_RESTARTS, TORCHELASTIC_RUN_ID (default ``none``, as torchrun's ``--rdzv-id``),
TORCH_NCCL_ASYNC_ERROR_HANDLING (kept when set, else 1), and OMP_NUM_THREADS=1 when unset and P > 1),
with these deliberate differences:

* No agent store: TORCHELASTIC_USE_AGENT_STORE is absent, so rank 0's ``init_process_group`` creates
  the TCPStore on MASTER_PORT itself (under torchrun the agent holds it and sets the variable True).
* No error file: TORCHELASTIC_ERROR_FILE is absent (``@record`` then just re-raises).
* TORCHELASTIC_SIGNALS_TO_HANDLE is absent: it configures torchrun's agent, and no worker reads it.
* TORCHELASTIC_RESTART_COUNT is ``$NETORCH_RESTART_COUNT`` when set (netorch's gang restarts), else 0.
* OMP_NUM_THREADS is set in the launcher before torch is imported: OpenMP reads it once, at load.

A Python target runs in the forked child through ``runpy`` with ``sys.argv`` (and, for a script,
``sys.path[0]``) as ``python`` sets them, stdout/stderr line-buffered (see _line_buffered); the
child exits with the target's status (SystemExit's code; 1 after an uncaught exception's traceback)
after running atexit handlers (non-daemon threads are not waited for). ``--no-python`` targets are
exec'd per rank with the same environment and do not import torch at all.

Supervision: SIGTERM, SIGINT, SIGHUP and SIGQUIT (torchrun's set) are forwarded to every rank, and
the launcher waits for them all (the sender escalates). Otherwise, when a rank exits non-zero or dies
by a signal, one ``netorch-launch:`` line names it on stderr, the other ranks get SIGTERM, then
SIGKILL after GRACE_S. Exit code: the first failed rank's (128+N for signal N), else 128+N when the
launcher got signal N, else 0. Ranks die with the launcher (PR_SET_PDEATHSIG), even if SIGKILLed.
"""

from __future__ import annotations

import argparse
import atexit
import ctypes
import io
import os
import runpy
import signal
import sys
import time
import traceback
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import NoReturn, TextIO

GRACE_S = 3.0  # between SIGTERM and SIGKILL for the siblings of a failed rank
PR_SET_PDEATHSIG = 1  # linux/prctl.h
FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT)  # torchrun's default set
# What torchrun's agent adds that no agent here stands behind; never inherited by a rank.
AGENT_ONLY = ("TORCHELASTIC_USE_AGENT_STORE", "TORCHELASTIC_ERROR_FILE")


@dataclass(frozen=True)
class LaunchSpec:
    """One node's launch: the torchrun-compatible arguments, validated."""

    nnodes: int
    nproc_per_node: int
    node_rank: int
    master_addr: str
    master_port: int
    max_restarts: int
    run_id: str
    role: str
    module: bool  # target is a module name (-m)
    no_python: bool  # target is a command to exec
    target: str
    args: tuple[str, ...]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m train.launch",
        description="torchrun's static launch for one node, with torch imported once and ranks forked",
        allow_abbrev=False,
    )
    p.add_argument("--nnodes", default="1", help="node count: N or N:N")
    p.add_argument("--nproc-per-node", "--nproc_per_node", type=int, default=1)
    p.add_argument("--node-rank", "--node_rank", type=int, default=0)
    p.add_argument("--master-addr", "--master_addr", default="127.0.0.1")
    p.add_argument("--master-port", "--master_port", type=int, default=29500)
    p.add_argument("--max-restarts", "--max_restarts", type=int, default=0)
    p.add_argument("--run-id", "--rdzv-id", "--rdzv_id", dest="run_id", default="none")
    p.add_argument("--role", default="default")
    p.add_argument("-m", "--module", action="store_true", help="the target is a module name")
    p.add_argument("--no-python", "--no_python", action="store_true", help="exec the target")
    p.add_argument("target", help="module (-m), script path, or command (--no-python)")
    p.add_argument("args", nargs=argparse.REMAINDER)
    return p


def parse_args(argv: Sequence[str]) -> LaunchSpec:
    """Parse a torchrun-style command line; exit 2 with one message on an unsupported value."""
    p = _parser()
    ns = p.parse_args(list(argv))
    low, _, high = ns.nnodes.partition(":")
    if not low.isdigit() or (high and high != low) or int(low) < 1:
        p.error(f"--nnodes {ns.nnodes}: only a fixed node count (N or N:N, N >= 1) is supported")
    nnodes = int(low)
    if ns.nproc_per_node < 1:
        p.error(f"--nproc-per-node {ns.nproc_per_node}: must be >= 1")
    if not 0 <= ns.node_rank < nnodes:
        p.error(f"--node-rank {ns.node_rank}: must be in [0, {nnodes}) for --nnodes {nnodes}")
    if ns.max_restarts != 0:
        p.error(f"--max-restarts {ns.max_restarts}: ranks are not restarted here "
                "(netorch restarts the whole gang); use 0")
    if ns.module and ns.no_python:
        p.error("-m and --no-python exclude each other: a module needs python")
    return LaunchSpec(
        nnodes=nnodes, nproc_per_node=ns.nproc_per_node, node_rank=ns.node_rank,
        master_addr=ns.master_addr, master_port=ns.master_port, max_restarts=ns.max_restarts,
        run_id=ns.run_id, role=ns.role, module=ns.module, no_python=ns.no_python,
        target=ns.target, args=tuple(ns.args),
    )


def worker_env(spec: LaunchSpec, local_rank: int, base: Mapping[str, str]) -> dict[str, str]:
    """Return the full environment of ``local_rank``: ``base`` plus torchrun's worker variables.

    ``base`` is the launcher's environment after :func:`run` set OMP_NUM_THREADS's default.
    """
    env = {k: v for k, v in base.items() if k not in AGENT_ONLY}
    world_size = spec.nnodes * spec.nproc_per_node
    rank = spec.node_rank * spec.nproc_per_node + local_rank
    env.update({
        "RANK": str(rank),
        "LOCAL_RANK": str(local_rank),
        "GROUP_RANK": str(spec.node_rank),
        "ROLE_RANK": str(rank),  # one role: role numbering equals global numbering
        "ROLE_NAME": spec.role,
        "LOCAL_WORLD_SIZE": str(spec.nproc_per_node),
        "WORLD_SIZE": str(world_size),
        "GROUP_WORLD_SIZE": str(spec.nnodes),
        "ROLE_WORLD_SIZE": str(world_size),
        "MASTER_ADDR": spec.master_addr,
        "MASTER_PORT": str(spec.master_port),
        "TORCHELASTIC_RESTART_COUNT": base.get("NETORCH_RESTART_COUNT", "0"),
        "TORCHELASTIC_MAX_RESTARTS": str(spec.max_restarts),
        "TORCHELASTIC_RUN_ID": spec.run_id,
        "TORCH_NCCL_ASYNC_ERROR_HANDLING": base.get("TORCH_NCCL_ASYNC_ERROR_HANDLING", "1"),
    })
    return env


def _die_with_parent(parent: int) -> None:
    """Have the kernel SIGKILL this process when the launcher dies, however it dies."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:  # the launcher died before prctl took effect
        os._exit(1)


def _line_buffered(stream: TextIO) -> TextIO:
    """A new ``stream`` on the same fd that writes each whole line at once (prompt, like ``python -u``).

    The ranks share the node's stream: one write per line keeps their lines from interleaving, which
    torchrun's ``python -u`` (and PYTHONUNBUFFERED) does not, as print's pieces are separate writes.
    """
    try:
        raw = io.FileIO(stream.fileno(), "w", closefd=False)
    except (AttributeError, OSError, ValueError):  # not backed by a file descriptor: leave it
        return stream
    return io.TextIOWrapper(io.BufferedWriter(raw), encoding=stream.encoding, errors=stream.errors,
                            line_buffering=True)


class _Prefixed(io.TextIOBase):
    """A text stream that puts ``prefix`` before every line written to ``inner``.

    Only Python-level writes carry it (what the rank prints, tracebacks); the C++ logs of gloo or
    NCCL go to the file descriptor directly. ``inner`` is line-buffered, so a prefixed line still
    reaches the node's stream in one write.
    """

    def __init__(self, inner: TextIO, prefix: str) -> None:
        self._inner = inner
        self._prefix = prefix
        self._at_line_start = True

    def write(self, text: str) -> int:
        out = []
        for piece in text.splitlines(keepends=True):
            if self._at_line_start:
                out.append(self._prefix)
            out.append(piece)
            self._at_line_start = piece.endswith(("\n", "\r"))
        self._inner.write("".join(out))
        return len(text)

    def flush(self) -> None:
        self._inner.flush()

    def fileno(self) -> int:
        return self._inner.fileno()

    def isatty(self) -> bool:
        return self._inner.isatty()

    def writable(self) -> bool:
        return True

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return self._inner.encoding


def _print_exception(e: BaseException) -> None:
    """Print an uncaught exception as ``python`` would: without this module's and runpy's frames."""
    tb = e.__traceback__
    hidden = {__file__, runpy.__file__, "<frozen runpy>"}
    while tb is not None and tb.tb_frame.f_code.co_filename in hidden:
        tb = tb.tb_next
    sys.excepthook(type(e), e.with_traceback(tb), tb)  # the hook prints e.__traceback__


def _exit_code(code: object) -> int:
    """Python's own handling of ``SystemExit(code)``: None is 0, an int itself, anything else printed, 1."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    print(code, file=sys.stderr)
    return 1


def _shadows_own_package(first_path: str) -> bool:
    """Whether ``first_path`` (what the target puts first on ``sys.path``) holds another ``train``.

    True when that folder has a ``train`` package or module (``train/``, ``train.py``, ...) that
    is not the ``train`` package already loaded here.
    """
    try:
        names = [n for n in os.listdir(first_path) if n == "train" or n.startswith("train.")]
    except OSError:
        return False
    if not names:
        return False
    own_file = getattr(sys.modules.get("train"), "__file__", None)
    if names == ["train"] and isinstance(own_file, str):
        mine = os.path.realpath(os.path.join(first_path, "train"))
        return mine != os.path.realpath(os.path.dirname(own_file))
    return True


def _forget_own_package(first_path: str) -> None:
    """Drop netorch's ``train`` package from ``sys.modules`` when the target's path shadows it.

    The launcher is started as ``python -P -m train.launch`` (``-P``: the working directory is not
    put on ``sys.path``, so a user's own ``train.py`` there cannot shadow this package). Once
    forked, a rank no longer needs it, and a user's module or script named ``train`` in
    ``first_path`` must import *their* code, not ours. When nothing there shadows it (netorch's
    own workloads, run from the folder the package lives in), the loaded modules are kept: the
    target would import the very same files again.
    """
    if not _shadows_own_package(first_path):
        return
    for name in [m for m in sys.modules if m == "train" or m.startswith("train.")]:
        del sys.modules[name]


def _run_python(spec: LaunchSpec) -> int:
    """Run the target as ``python [-m] TARGET ARGS`` would, in this process; return its exit status."""
    sys.argv = [spec.target, *spec.args]  # run_module(alter_sys=True) replaces argv[0] by the file
    sys.stdout, sys.stderr = _line_buffered(sys.stdout), _line_buffered(sys.stderr)
    if spec.nproc_per_node > 1:  # several ranks share the node's stream: say whose line it is
        prefix = f"[rank {os.environ.get('RANK', '?')}] "
        sys.stdout, sys.stderr = _Prefixed(sys.stdout, prefix), _Prefixed(sys.stderr, prefix)
    if "numpy" in sys.modules:  # forked ranks would otherwise share numpy's global random state
        sys.modules["numpy"].random.seed()
    # As `python -m MODULE` puts the working directory first, and `python SCRIPT` the script's.
    first_path = os.getcwd() if spec.module else os.path.dirname(os.path.abspath(spec.target))
    _forget_own_package(first_path)
    try:
        sys.path.insert(0, first_path)
        if spec.module:
            runpy.run_module(spec.target, run_name="__main__", alter_sys=True)
        else:
            runpy.run_path(spec.target, run_name="__main__")
        return 0
    except SystemExit as e:
        return _exit_code(e.code)
    except KeyboardInterrupt as e:
        _print_exception(e)
        sys.stderr.flush()
        signal.signal(signal.SIGINT, signal.SIG_DFL)  # like python: die by SIGINT, the shell sees it
        os.kill(os.getpid(), signal.SIGINT)
        return 128 + signal.SIGINT
    except BaseException as e:
        _print_exception(e)
        return 1


def _rank_main(spec: LaunchSpec, env: dict[str, str], parent: int, mask: set[int | signal.Signals]) -> NoReturn:
    """The forked child: become one rank and never return into the launcher's code."""
    code = 1
    try:
        _die_with_parent(parent)
        os.environ.clear()
        os.environ.update(env)
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        if spec.no_python:
            for sig in (signal.SIGPIPE, signal.SIGXFSZ):  # python ignores these; exec'd programs must not
                signal.signal(sig, signal.SIG_DFL)
            try:
                os.execvpe(spec.target, [spec.target, *spec.args], env)
            except OSError as e:
                print(f"netorch-launch: cannot run {spec.target!r}: {e.strerror}", file=sys.stderr)
                code = 127
        else:
            code = _run_python(spec)
            atexit._run_exitfuncs()
    except BaseException:
        traceback.print_exc()
    finally:
        flush_std()
        os._exit(code)


def _describe(status: int) -> tuple[str, int]:
    """Return (what happened, launcher exit code) for a rank's ``os.waitpid`` status."""
    code = os.waitstatus_to_exitcode(status)
    if code < 0:
        return f"was killed by {signal.Signals(-code).name}", 128 - code
    return f"exited with code {code}", code


class _Node:
    """The launcher's children: who they are, and how to stop them."""

    def __init__(self, spec: LaunchSpec) -> None:
        self.spec = spec
        self.live: dict[int, int] = {}  # pid -> local rank
        self.signalled: int | None = None

    def start(self) -> None:
        """Fork every rank with forwarded signals held back, then install the forwarding handlers."""
        for stream in (sys.stdout, sys.stderr):  # else unflushed text is printed by every child too
            stream.flush()
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, FORWARDED)
        parent = os.getpid()
        try:
            for local_rank in range(self.spec.nproc_per_node):
                env = worker_env(self.spec, local_rank, os.environ)
                pid = os.fork()
                if pid == 0:
                    _rank_main(self.spec, env, parent, mask)
                self.live[pid] = local_rank
        except OSError:
            self.kill(signal.SIGKILL)
            raise
        finally:
            for sig in FORWARDED:
                if signal.getsignal(sig) is not signal.SIG_IGN:  # e.g. SIGINT under nohup stays ignored
                    signal.signal(sig, self._forward)
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)

    def _forward(self, signum: int, _frame: object) -> None:
        if self.signalled is None:
            self.signalled = signum
        os.write(2, f"netorch-launch: received {signal.Signals(signum).name}; "
                    f"forwarding it to {len(self.live)} local rank(s)\n".encode())
        self.kill(signum)

    def kill(self, sig: int) -> None:
        """Send ``sig`` to every rank still running."""
        for pid in list(self.live):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass  # exited, not reaped yet

    def _reap(self) -> tuple[int, int]:
        """Wait for the next rank to end; return (its local rank, its wait status)."""
        pid, status = os.waitpid(-1, 0)
        return self.live.pop(pid), status

    def stop(self) -> None:
        """SIGTERM the ranks, SIGKILL those still there after GRACE_S, and reap them all."""
        self.kill(signal.SIGTERM)
        deadline = time.monotonic() + GRACE_S
        while self.live and time.monotonic() < deadline:
            pid, _ = os.waitpid(-1, os.WNOHANG)
            if pid:
                del self.live[pid]
            else:
                time.sleep(0.02)
        self.kill(signal.SIGKILL)
        while self.live:
            self._reap()

    def supervise(self) -> int:
        """Wait for every rank; return the launcher's exit code (see the module docstring)."""
        failure: int | None = None
        while self.live:
            local_rank, status = self._reap()
            if status == 0 or failure is not None:
                continue
            what, failure = _describe(status)
            if self.signalled is not None:
                continue  # every rank got the signal: whoever sent it decides when to escalate
            rank = self.spec.node_rank * self.spec.nproc_per_node + local_rank
            then = f"stopping the other {len(self.live)} local rank(s)" if self.live else "no other rank here"
            print(f"netorch-launch: rank {rank} (local rank {local_rank}) {what}; {then}",
                  file=sys.stderr, flush=True)
            self.stop()
        if failure is None and self.signalled is not None:
            return 128 + self.signalled
        return failure or 0


def run(spec: LaunchSpec) -> int:
    """Fork ``spec``'s ranks from this process, supervise them, and return the launcher's exit code.

    What :func:`main` does once the command line is parsed; ``train.agent``'s job child calls it too.
    The calling process becomes the ranks' supervisor: it installs the forwarding handlers for
    FORWARDED and reaps *any* child (``waitpid(-1)``), so call it in a process that exists for this
    one launch. It imports torch unless the target is ``--no-python`` (a no-op when already loaded).
    """
    if "OMP_NUM_THREADS" not in os.environ and spec.nproc_per_node > 1:
        os.environ["OMP_NUM_THREADS"] = "1"  # torchrun's default; before torch loads OpenMP
    if not spec.no_python:
        # The one import of the node. Nothing here may create a CUDA context: the ranks fork after it.
        try:
            import torch  # noqa: F401
            import torch.distributed  # noqa: F401
        except ImportError as e:
            print(f"netorch-launch: cannot import torch ({e}); install it in this image, "
                  "or use --no-python for a non-Python command", file=sys.stderr)
            return 1
    node = _Node(spec)
    node.start()
    return node.supervise()


def main(argv: Sequence[str] | None = None) -> int:
    """Launch this node's ranks and supervise them; return the launcher's exit code."""
    return run(parse_args(sys.argv[1:] if argv is None else argv))


def exit_now(code: int) -> NoReturn:
    """Exit with ``code`` after the atexit handlers and a flush, without tearing the interpreter down.

    Finalizing an interpreter that imported torch frees its modules one by one: 0.38 s of CPU per
    node in our image (0.02 s with ``os._exit``), paid after the job's last line, in every container
    at once. The launcher holds nothing that needs more than atexit and a flush (nor does the
    ``netorch`` command, which leaves the same way).
    """
    atexit._run_exitfuncs()
    flush_std()
    os._exit(code)


def flush_std() -> None:
    """Flush stdout and stderr, whatever became of them (a closed pipe, a closed stream)."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass


if __name__ == "__main__":
    exit_now(main())
