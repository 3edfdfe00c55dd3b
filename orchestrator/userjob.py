"""The user's own job: ``netorch run ... -- COMMAND [ARGS...]`` inputs, checked one by one.

Pure helpers (no torch, no Docker) that turn the ``run`` command's flags into plan data, each
bad input refused with one :class:`~orchestrator.errors.ConfigError` line that names the flag,
the value and the fix:

- :func:`parse_mount` / :func:`check_mounts`: ``--mount SRC:DST[:ro|rw]`` in ``docker run -v``
  syntax, as :class:`VolumeMount` values (a host directory bind or a named volume).
- :func:`parse_env`: ``--env NAME=VALUE`` items, refusing the names the plan sets itself.
- :func:`expand_command`: per-node placeholders such as ``{node_rank}`` in the command's argv.
- :func:`parse_command` / :func:`classify_command`: whether the command is a Python module, a
  Python script or another program, so the in-node launcher can fork Python targets after one
  torch import and ``exec`` the rest.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal

from orchestrator.errors import ConfigError
from orchestrator.grammar import ENV_NAME_RE
from orchestrator.plan import MountSpec
from orchestrator.settings import Settings
from orchestrator.workloads import CheckpointSpec, WorkloadSpec

MountKind = Literal["bind", "volume"]
CommandKind = Literal["python-module", "python-script", "exec"]

# Docker's own grammar for volume names (daemon/names: RestrictedNamePattern).
_VOLUME_NAME_RE: Final = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.-]+")
# What marks a mount source as a host path rather than a volume name. Docker's CLI reads only
# absolute paths as binds; a relative path there becomes a (badly named) volume. We also take
# ./ ../ and ~ so that `--mount ./data:/data` means the directory the user sees.
_BIND_PREFIXES: Final = ("/", "./", "../", "~")
_MODES: Final = ("ro", "rw")

#: The placeholders ``netorch run`` fills in per node, in the order help texts list them.
PLACEHOLDERS: Final = (
    "node_rank", "nnodes", "nproc_per_node", "world_size", "master_addr", "master_port",
)

# One token of a command argument, tried left to right at each position:
#   ${...}        shell parameter syntax (`bash -c 'echo ${RANK}'`): kept as it is;
#   {{name}}      an escaped placeholder: becomes the literal text {name};
#   {name}        a placeholder: replaced by its value (an unknown name is an error).
# Any other brace (JSON such as '{"lr": 0.1}', `{}`, `{0}`, `{ x }`) is not a token and passes
# through unchanged. Only this exact `{{name}}` form is an escape: a lone `{{` or `}}` (as in
# nested JSON '{"a": {"b": 1}}') stays as written, unlike str.format, which would eat a brace.
_TOKEN_RE: Final = re.compile(
    r"(?P<shell>\$\{[^}]*\})"
    r"|\{\{(?P<escaped>[A-Za-z_][A-Za-z0-9_]*)\}\}"
    r"|\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)\}"
)
# `python`, `python3`, `python3.11` as a bare word (looked up on PATH in the node).
_PYTHON_RE: Final = re.compile(r"python(\d+(\.\d+)?)?")


@dataclass(frozen=True)
class VolumeMount:
    """One ``--mount``: a host directory (``bind``) or a named Docker volume at ``target``.

    ``source`` is an absolute, resolved host path for a bind and the volume's name for a
    volume; ``target`` is an absolute, normalised container path other than ``/``.
    """

    source: str
    target: str
    read_only: bool
    kind: MountKind

    @property
    def mode(self) -> Literal["ro", "rw"]:
        return "ro" if self.read_only else "rw"

    @property
    def spec(self) -> str:
        """The mount in ``docker run -v`` syntax, ``SRC:DST:ro|rw``; parses back to itself."""
        return f"{self.source}:{self.target}:{self.mode}"


def parse_mount(text: str, base_dir: Path) -> VolumeMount:
    """Parse one ``--mount SRC:DST[:ro|rw]`` (``docker run -v`` syntax); default mode ``rw``.

    SRC is a host path when it starts with ``/``, ``./``, ``../`` or ``~`` (or is ``.`` or
    ``..``): it is resolved against ``base_dir`` (the directory the user ran netorch from),
    ``~`` expanded, and must exist. Any other SRC is a named volume and must follow Docker's
    volume-name grammar. DST must be an absolute container path other than ``/``; it is
    normalised (``/data/`` becomes ``/data``). Raise :class:`ConfigError` otherwise.
    """
    flag = f"--mount {text!r}"
    if "\n" in text or "\r" in text or "\x00" in text:
        raise ConfigError(f"{flag}: contains a newline or NUL; give SRC:DST[:ro|rw] on one line")
    parts = text.split(":")
    if len(parts) not in (2, 3):
        raise ConfigError(
            f"{flag}: has {len(parts)} ':'-separated part(s); use SRC:DST or SRC:DST:ro|rw "
            "(neither path may contain ':')"
        )
    source, target = parts[0], parts[1]
    mode = parts[2] if len(parts) == 3 else "rw"
    if mode not in _MODES:
        raise ConfigError(
            f"{flag}: mode {mode!r} is not supported; use ro (read-only) or rw (read-write)"
        )
    if not source:
        raise ConfigError(f"{flag}: the source (before the first ':') is empty; "
                          "give a host path such as ./data or a volume name")
    target = _normalise_target(flag, target)
    if source in (".", "..") or source.startswith(_BIND_PREFIXES):
        return VolumeMount(_resolve_bind_source(flag, source, base_dir), target,
                           mode == "ro", "bind")
    if not _VOLUME_NAME_RE.fullmatch(source):
        raise ConfigError(
            f"{flag}: source {source!r} is neither a host path (start it with /, ./, ../ or ~) "
            "nor a valid Docker volume name ([a-zA-Z0-9][a-zA-Z0-9_.-]+)"
        )
    return VolumeMount(source, target, mode == "ro", "volume")


def _normalise_target(flag: str, target: str) -> str:
    if not target.startswith("/"):
        raise ConfigError(
            f"{flag}: container path {target!r} is not absolute; start it with / (e.g. /data)"
        )
    # normpath keeps a leading '//' (POSIX allows it to mean something else); Docker does not.
    normal = "/" + posixpath.normpath(target).lstrip("/")
    if normal == "/":
        raise ConfigError(
            f"{flag}: cannot mount over the container's root /; choose a directory such as /data"
        )
    return normal


def _host_path(flag: str, source: str, base_dir: Path) -> Path:
    """``source`` as an absolute, resolved host path (``~`` expanded, relative to ``base_dir``)."""
    try:
        path = Path(source).expanduser()
    except RuntimeError as e:  # `~nosuchuser/...`
        raise ConfigError(f"{flag}: cannot expand {source!r} ({e}); give the full path") from e
    return (base_dir / path).resolve()  # base_dir is ignored when path is absolute


def _mountable(flag: str, resolved: Path) -> str:
    """``resolved`` as a bind source, refused when Docker could not express it."""
    if ":" in str(resolved):
        # The daemon takes binds as SRC:DST:MODE strings: a ':' in SRC cannot be expressed.
        raise ConfigError(
            f"{flag}: host path {str(resolved)!r} contains ':', which Docker cannot mount; "
            "use a path without ':' (a symlink to it works)"
        )
    return str(resolved)


def _resolve_bind_source(flag: str, source: str, base_dir: Path) -> str:
    resolved = _host_path(flag, source, base_dir)
    if not resolved.exists():
        raise ConfigError(
            f"{flag}: host path {str(resolved)!r} does not exist; create it or fix the path"
        )
    return _mountable(flag, resolved)


def check_mounts(
    mounts: Sequence[VolumeMount], owned: Mapping[str, str]
) -> tuple[VolumeMount, ...]:
    """Refuse two mounts at one container path, and mounts at a path the plan owns.

    ``owned`` maps the container paths the plan mounts itself to what claims them, e.g.
    ``{"/dev/shm": "the plan's shared memory", "/checkpoints": "--checkpoint-dir"}``; pass
    ``/checkpoints`` only when a checkpoint directory is set and ``/workspace`` only when a
    work directory is set. Mounts *below* an owned path (``/workspace/data``) are allowed:
    Docker mounts the parent first. Return ``mounts`` as a tuple.
    """
    seen: dict[str, VolumeMount] = {}
    for mount in mounts:
        owner = owned.get(mount.target)
        if owner is not None:
            raise ConfigError(
                f"--mount {mount.spec!r}: {mount.target} is mounted by {owner}; "
                "choose another container path"
            )
        first = seen.get(mount.target)
        if first is not None:
            raise ConfigError(
                f"--mount: {first.spec!r} and {mount.spec!r} both target {mount.target}; "
                "each container path can be mounted once"
            )
        seen[mount.target] = mount
    return tuple(mounts)


def parse_env(items: Sequence[str], owned: frozenset[str]) -> dict[str, str]:
    """Parse ``--env NAME=VALUE`` items (the value may contain ``=``) into a dict, in order.

    NAME must be a shell-style identifier, given once, and not one of ``owned``: the variables
    the plan sets on every node (``MASTER_ADDR``, ``RANK``, ...). Raise :class:`ConfigError`.
    """
    env: dict[str, str] = {}
    for item in items:
        flag = f"--env {item!r}"
        name, eq, value = item.partition("=")
        if not eq:
            raise ConfigError(f"{flag}: no '='; write NAME=VALUE (e.g. --env {item}=1)")
        if not ENV_NAME_RE.fullmatch(name):
            raise ConfigError(
                f"{flag}: {name!r} is not a variable name; use letters, digits and _ "
                "and do not start with a digit"
            )
        if "\x00" in value:
            raise ConfigError(f"{flag}: the value contains a NUL byte, which no process can receive")
        if name in owned:
            raise ConfigError(
                f"{flag}: the plan sets {name} on every node; drop this --env "
                "(change it through the plan's own flags)"
            )
        if name in env:
            raise ConfigError(
                f"{flag}: {name} is already set (to {env[name]!r}); give each --env name once"
            )
        env[name] = value
    return env


def expand_command(argv: Sequence[str], values: Mapping[str, str | int]) -> tuple[str, ...]:
    """Return ``argv`` with each ``{name}`` placeholder replaced by ``values[name]``.

    Rules, per argument (see ``_TOKEN_RE``): ``{name}`` with ``name`` an identifier is a
    placeholder and must be a key of ``values`` (normally every name in
    :data:`PLACEHOLDERS`); ``{{name}}`` is the literal text ``{name}``; ``${...}`` is shell
    syntax and is kept; every other brace is kept as written, so JSON arguments pass through
    unchanged. Raise :class:`ConfigError` for an empty command, a NUL byte or an unknown
    placeholder (the message lists the known ones).
    """
    if not argv:
        raise ConfigError("netorch run: no command given; put it after --, e.g. -- python train.py")
    known = ", ".join(f"{{{name}}}" for name in values)

    def substitute(match: re.Match[str]) -> str:
        if match["shell"] is not None:
            return match["shell"]
        if match["escaped"] is not None:
            return "{" + match["escaped"] + "}"
        name = match["name"]
        if name not in values:
            raise ConfigError(
                f"command argument {match.string!r}: unknown placeholder {{{name}}}; "
                f"known: {known} (write {{{{{name}}}}} for the literal text {{{name}}})"
            )
        return str(values[name])

    expanded = []
    for arg in argv:
        if "\x00" in arg:
            raise ConfigError(f"command argument {arg!r} contains a NUL byte; remove it")
        expanded.append(_TOKEN_RE.sub(substitute, arg))
    return tuple(expanded)


@dataclass(frozen=True)
class UserCommand:
    """The user's command, taken apart for the in-node launcher.

    ``python-module``: ``python -m TARGET ARGS``; ``python-script``: ``python TARGET ARGS``;
    ``exec``: any other program, ``TARGET`` being ``argv[0]``. ``argv`` is the command as given.
    """

    kind: CommandKind
    target: str
    args: tuple[str, ...]
    argv: tuple[str, ...]


def parse_command(argv: Sequence[str]) -> UserCommand:
    """Classify ``argv`` and return its pieces (see :class:`UserCommand`).

    Only a bare ``python``/``python3``/``python3.X`` followed directly by ``-m MODULE`` (or
    ``-mMODULE``) or by a script path counts as Python. Everything else runs as given
    (``exec``): an interpreter named by path (``/opt/venv/bin/python`` may not be the
    launcher's interpreter), interpreter options (``python -u x.py``: a fork could not honour
    them), ``-c``, ``-`` (stdin) and a bare ``python``. A launcher that forks must still check
    that ``python`` on the node's PATH is its own interpreter.
    """
    command = tuple(argv)
    if not command:
        raise ConfigError("netorch run: no command given; put it after --, e.g. -- python train.py")
    if _PYTHON_RE.fullmatch(command[0]) and len(command) >= 2:
        first = command[1]
        if first == "-m" and len(command) >= 3:
            return UserCommand("python-module", command[2], command[3:], command)
        if first.startswith("-m") and len(first) > 2:
            return UserCommand("python-module", first[2:], command[2:], command)
        if not first.startswith("-"):
            return UserCommand("python-script", first, command[2:], command)
    return UserCommand("exec", command[0], command[1:], command)


def classify_command(argv: Sequence[str]) -> CommandKind:
    """``"python-module"``, ``"python-script"`` or ``"exec"``; see :func:`parse_command`."""
    return parse_command(argv).kind



# --------------------------------------------------------------------------------------------
# netorch run: settings -> the workload every node runs
# --------------------------------------------------------------------------------------------

#: Where the user's code (``--workdir``) and checkpoints (``--checkpoint-dir``) appear in nodes.
WORKSPACE_DIR = "/workspace"
CHECKPOINTS_DIR = "/checkpoints"

#: Variables the plan or the launcher sets on every rank; ``--env`` may not set them.
OWNED_ENV: frozenset[str] = frozenset({
    "MASTER_ADDR", "MASTER_PORT", "WORLD_SIZE", "RANK", "LOCAL_RANK", "NODE_RANK", "NNODES",
    "NPROC_PER_NODE", "GROUP_RANK", "ROLE_RANK", "ROLE_NAME", "LOCAL_WORLD_SIZE",
    "GROUP_WORLD_SIZE", "ROLE_WORLD_SIZE", "TORCHELASTIC_RESTART_COUNT",
    "TORCHELASTIC_MAX_RESTARTS", "TORCHELASTIC_RUN_ID", "TORCHELASTIC_USE_AGENT_STORE",
    "NETORCH_RUN_ID", "NETORCH_NODE_NAME", "NETORCH_RESTART_COUNT", "NETORCH_PLANNED_IP",
    "NETORCH_IFNAME", "NETORCH_CHECKPOINT_DIR",
})


def run_workload(settings: Settings, base_dir: Path, in_node_paths: bool,
                 tensorboard_dir: Path | None = None) -> WorkloadSpec:
    """The user's job from ``[run]`` (the ``netorch run`` flags): command, mounts, env.

    ``base_dir`` resolves relative host paths (the user's current directory). With
    ``in_node_paths`` (containers) the workdir is mounted at /workspace (read-only unless
    ``run.workdir_writable``) and the checkpoint directory at /checkpoints on every node; on
    the process backend nodes run on this host, so the workdir is their working directory and
    ``{checkpoint_dir}`` / ``NETORCH_CHECKPOINT_DIR`` name the host directory itself.
    ``tensorboard_dir`` (``--tensorboard``) is mounted read-write at the same path in every node
    (orchestrator.tensorboard.IN_NODE_DIR), named by ``NETORCH_TENSORBOARD_DIR``.
    Raises ConfigError (one line: flag, value, fix) before anything exists.
    """
    run = settings.run
    command = parse_command(run.command)
    if command.kind == "python-module":
        target: tuple[str, ...] = ("-m", command.target, *command.args)
    elif command.kind == "python-script":
        target = (command.target, *command.args)
    else:
        target = ("--no-python", *command.argv)
    workdir_source = None
    if run.workdir is not None:
        workdir_source = _existing_dir("--workdir", run.workdir, base_dir)
    checkpoint = None
    if run.checkpoint_dir is not None:
        host = _host_path("--checkpoint-dir", run.checkpoint_dir, base_dir)
        host.mkdir(parents=True, exist_ok=True)
        checkpoint = CheckpointSpec(str(host), CHECKPOINTS_DIR, master_only=False)
    mounts = tuple(parse_mount(text, base_dir) for text in run.mounts)
    if mounts and not in_node_paths:
        raise ConfigError(
            f"--mount {mounts[0].spec!r}: the {settings.backend} backend runs nodes on this "
            "host's own filesystem and mounts nothing; pass the host path to your script "
            "instead, or use --backend docker"
        )
    owned = {"/dev/shm": "the plan's shared memory (docker.shm_size)"}
    if checkpoint is not None:
        owned[CHECKPOINTS_DIR] = "--checkpoint-dir"
    if workdir_source is not None:
        owned[WORKSPACE_DIR] = "--workdir"
    if tensorboard_dir is not None:
        owned["/netorch"] = "netorch's own folders (--tensorboard)"
    check_mounts(mounts, owned)
    env = parse_env([f"{k}={v}" for k, v in run.env.items()], OWNED_ENV)
    if tensorboard_dir is not None:
        from orchestrator.tensorboard import ENV_VAR, IN_NODE_DIR

        if in_node_paths:
            mounts = (*mounts, VolumeMount(str(tensorboard_dir), IN_NODE_DIR, False, "bind"))
        env[ENV_VAR] = IN_NODE_DIR if in_node_paths else str(tensorboard_dir)
    return WorkloadSpec(
        kind="run",
        target=target,
        emits_result=False,
        env=tuple(env.items()),
        mounts=tuple(MountSpec(m.source, m.target, m.read_only, m.kind) for m in mounts),
        checkpoint=checkpoint,
        workdir=(WORKSPACE_DIR if in_node_paths else workdir_source) if workdir_source else None,
        workdir_source=workdir_source if in_node_paths else None,
        workdir_read_only=not run.workdir_writable,
        image=run.image,
        placeholders=True,
    )


def _existing_dir(flag: str, text: str, base_dir: Path) -> str:
    path = _host_path(flag, text, base_dir)
    if not path.is_dir():
        raise ConfigError(f"{flag} {text}: no such directory ({path}); give the folder with "
                          "your code")
    return _mountable(flag, path)
