"""Build the netorch training image: offline base rootfs, torch wheelhouse, Dockerfile build.

Two modes:

* **offline** (no registry, no PyPI inside containers): the base image is a Debian bookworm
  rootfs made on the host by ``mmdebstrap`` and imported as ``netorch-base:bookworm``; torch and
  its dependencies come from a wheelhouse downloaded on the host (``.cache/wheelhouse``) and are
  installed with ``pip --no-index`` during the build.
* **online** (GPU hosts): the base is a CUDA runtime image; the build installs the pinned torch
  (:data:`~orchestrator.versions.TORCH_VERSION`, its CUDA build from PyTorch's wheel index), so
  GPU hosts run the torch version everything else is tested with.

:func:`image_build_spec` says what a build would use (``netorch image build --dry-run``).

Every build is labelled with a hash of its inputs (:data:`LABEL_INPUTS_HASH`); when the tag
already carries the hash of the current inputs, :func:`build_image` returns without building.

Run it with ``netorch image build`` (scripts/build-image.sh wraps that command).
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import docker.errors
# From docker.client rather than the package: mypy run from the repo root resolves a bare
# ``docker`` to the repo's docker/ folder (a namespace package) and loses the SDK's attributes.
from docker.client import DockerClient

from orchestrator.backends.docker import connect, docker_errors, explanation
from orchestrator.errors import ImageError, Interrupted
from orchestrator.session import sigterm_as_interrupt
from orchestrator.versions import GPU_BASE_IMAGE, TORCH_CUDA_INDEX_URL, TORCH_VERSION

Progress = Callable[[str], None]

REPO_ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = REPO_ROOT / "docker" / "Dockerfile"
TRAIN_DIR = REPO_ROOT / "train"
WHEELHOUSE_DIR = REPO_ROOT / ".cache" / "wheelhouse"

DEFAULT_TAG = "netorch:latest"
BASE_ROOTFS_TAG = "netorch-base:bookworm"
# The local "+cpu" label pins the CPU build: a bare "torch==2.13.0" may resolve to the
# multi-GB CUDA wheels on PyPI when no CPU wheel is on the find-links path.
TORCH_REQUIREMENT = f"torch=={TORCH_VERSION}+cpu"
# Online (GPU hosts): the same version's CUDA build, from PyTorch's index for TORCH_CUDA.
CUDA_TORCH_REQUIREMENT = f"torch=={TORCH_VERSION}"
# numpy too: torch warns "Failed to initialize NumPy" at every import without it.
# prometheus-client: ranks serve metrics from inside the containers (train/telemetry.py).
RUNTIME_REQUIREMENTS = ("numpy>=1.26,<3", "prometheus-client>=0.20")
WHEELHOUSE_REQUIREMENTS = (TORCH_REQUIREMENT, *RUNTIME_REQUIREMENTS)
# Debian bookworm's python3 is 3.11 with glibc 2.36.
WHEEL_PYTHON_VERSION = "3.11"
WHEEL_ABI = "cp311"
WHEEL_PLATFORMS = (
    "manylinux_2_28_x86_64",
    "manylinux_2_17_x86_64",
    "manylinux2014_x86_64",
    "linux_x86_64",
)

BASE_SUITE = "bookworm"
BASE_PACKAGES = (
    "python3",
    "python3-venv",
    "iproute2",
    "iputils-ping",
    "iperf3",
    "ca-certificates",
    "procps",
)
# `docker import` gives an image with no config at all; give it what a Debian image has.
BASE_IMPORT_CHANGES = (
    "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "ENV LANG=C.UTF-8",
    'CMD ["/bin/bash"]',
)

LABEL_INPUTS_HASH = "io.netorch.inputs-hash"
LABEL_MODE = "io.netorch.image-mode"
LABEL_BASE = "io.netorch.base-image"

WHEELHOUSE_MANIFEST = "netorch-wheelhouse.json"
_HASH_SCHEME = "netorch-image-inputs/1"
_LOG_TAIL_LINES = 30
# The legacy builder's line for each RUN step's intermediate container.
_RUNNING_IN = re.compile(r"^\s*---> Running in ([0-9a-f]{12,64})\s*$")
# How long an interrupted build may take to let go of its intermediate containers.
_CLEANUP_S = 20.0


@dataclass(frozen=True)
class ImageBuildResult:
    """Outcome of :func:`build_image`.

    ``up_to_date`` is True when the tag already carried the hash of the current inputs and
    nothing was built; ``seconds`` is the wall time spent in :func:`build_image`.
    """

    tag: str
    image_id: str
    inputs_hash: str
    up_to_date: bool
    seconds: float
    offline: bool
    base_image: str


def _say(progress: Progress | None, line: str) -> None:
    if progress is not None:
        progress(line)


def _get_image(client: DockerClient, ref: str) -> Any | None:
    """The daemon's image ``ref``, or None when it has none (no pull is attempted)."""
    with docker_errors(f"inspecting image {ref}", fallback=ImageError):
        try:
            return client.images.get(ref)
        except docker.errors.ImageNotFound:
            return None


def image_exists(client: DockerClient, tag: str) -> bool:
    """Return True when the daemon has an image named ``tag`` (no pull is attempted)."""
    return _get_image(client, tag) is not None


def _image_id(client: DockerClient, ref: str) -> str | None:
    image = _get_image(client, ref)
    return None if image is None else str(image.id)


def _image_labels(client: DockerClient, ref: str) -> Mapping[str, str]:
    image = _get_image(client, ref)
    labels = (image.labels if image is not None else None) or {}
    return {str(k): str(v) for k, v in labels.items()}


def _run_streaming(cmd: Sequence[str], *, what: str, progress: Progress | None) -> None:
    """Run ``cmd``, stream its output lines to ``progress``, raise ImageError with a tail."""
    tail: deque[str] = deque(maxlen=_LOG_TAIL_LINES)
    try:
        proc = subprocess.Popen(
            list(cmd),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
        )
    except FileNotFoundError as e:
        raise ImageError(
            f"{what}: {cmd[0]!r} is not installed; run scripts/system-setup.sh"
        ) from e
    assert proc.stdout is not None
    for raw in proc.stdout:
        line = raw.rstrip()
        tail.append(line)
        _say(progress, line)
    rc = proc.wait()
    if rc != 0:
        log = "\n".join(f"  {line}" for line in tail)
        raise ImageError(f"{what} failed (exit {rc}): {' '.join(cmd)}\n{log}")


def _host_apt_sources() -> list[str]:
    """The host's Debian apt source files, so mmdebstrap uses the mirror the host reaches.

    Third-party repositories are left out: their keys are not in the new rootfs. With no
    Debian source on the host, the public mirror is used.
    """
    candidates = [Path("/etc/apt/sources.list")]
    parts = Path("/etc/apt/sources.list.d")
    if parts.is_dir():
        candidates += sorted(
            p for p in parts.iterdir() if p.suffix in (".list", ".sources")
        )
    found = [
        str(p)
        for p in candidates
        if p.is_file() and "debian.org" in p.read_text(errors="replace")
    ]
    return found or ["http://deb.debian.org/debian"]


def build_base_rootfs(
    client: DockerClient,
    *,
    tag: str = BASE_ROOTFS_TAG,
    suite: str = BASE_SUITE,
    packages: Sequence[str] = BASE_PACKAGES,
    force: bool = False,
    progress: Progress | None = None,
) -> str:
    """Make a minimal Debian rootfs with mmdebstrap and import it as image ``tag``.

    Uses the host's apt sources (the mirror the host can reach). Skips the work when
    ``tag`` already exists, unless ``force``. Returns the image id.
    """
    if not force:
        existing = _image_id(client, tag)
        if existing is not None:
            _say(progress, f"base image {tag} exists ({existing[:19]})")
            return existing
    if shutil.which("mmdebstrap") is None:
        raise ImageError(
            "mmdebstrap is not installed, so the offline base image cannot be made; "
            "run scripts/system-setup.sh"
        )
    repo, _, img_tag = tag.rpartition(":")
    if not repo or "/" in img_tag:  # no tag given ("name" or "host:port/name")
        repo, img_tag = tag, "latest"
    with tempfile.TemporaryDirectory(prefix="netorch-rootfs-") as tmp:
        tar_path = Path(tmp) / "rootfs.tar"
        cmd = [
            "mmdebstrap",
            "--variant=minbase",
            f"--include={','.join(packages)}",
            # Snapshot-style mirrors serve Release files whose Valid-Until has passed.
            '--aptopt=Acquire::Check-Valid-Until "false"',
            # Keep the image small: no apt lists or docs in the rootfs.
            "--dpkgopt=path-exclude=/usr/share/doc/*",
            "--dpkgopt=path-include=/usr/share/doc/*/copyright",
            "--dpkgopt=path-exclude=/usr/share/man/*",
            "--dpkgopt=path-exclude=/usr/share/locale/*",
            '--customize-hook=rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*.bin',
            suite,
            str(tar_path),
            *_host_apt_sources(),
        ]
        _say(progress, f"mmdebstrap {suite} -> {tar_path}")
        _run_streaming(cmd, what="mmdebstrap", progress=progress)
        _say(
            progress,
            f"importing {tar_path} ({tar_path.stat().st_size >> 20} MiB) as {tag}",
        )
        with docker_errors(f"importing the base rootfs as {tag}", fallback=ImageError):
            client.api.import_image_from_file(
                str(tar_path),
                repository=repo,
                tag=img_tag,
                changes=list(BASE_IMPORT_CHANGES),
            )
    image_id = _image_id(client, tag)
    if image_id is None:
        raise ImageError(f"imported the base rootfs but {tag} is not there afterwards")
    return image_id


def _wheel_files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.glob("*.whl") if p.is_file())


def _wheelhouse_key(requirements: Sequence[str]) -> dict[str, object]:
    return {
        "requirements": list(requirements),
        "python_version": WHEEL_PYTHON_VERSION,
        "abi": WHEEL_ABI,
        "platforms": list(WHEEL_PLATFORMS),
    }


def wheelhouse_is_complete(
    directory: Path, requirements: Sequence[str] = WHEELHOUSE_REQUIREMENTS
) -> bool:
    """True when ``directory`` holds a finished download of ``requirements`` for the image."""
    manifest = directory / WHEELHOUSE_MANIFEST
    try:
        data = json.loads(manifest.read_text())
    except (OSError, ValueError):
        return False
    if not isinstance(data, dict) or data.get("key") != _wheelhouse_key(requirements):
        return False
    wheels = data.get("wheels")
    if not isinstance(wheels, dict) or not wheels:
        return False
    for name, size in wheels.items():
        p = directory / str(name)
        if not p.is_file() or p.stat().st_size != size:
            return False
    return True


def prepare_wheelhouse(
    directory: Path = WHEELHOUSE_DIR,
    *,
    requirements: Sequence[str] = WHEELHOUSE_REQUIREMENTS,
    force: bool = False,
    progress: Progress | None = None,
) -> list[Path]:
    """Download ``requirements`` and their dependencies as cp311 manylinux x86_64 wheels.

    The wheels suit the offline image's Debian bookworm python3 (3.11). A directory whose
    manifest says it is complete for the same requirements is reused as is. Returns the
    wheel files.
    """
    directory.mkdir(parents=True, exist_ok=True)
    if not force and wheelhouse_is_complete(directory, requirements):
        wheels = _wheel_files(directory)
        _say(progress, f"wheelhouse {directory} is complete ({len(wheels)} wheels)")
        return wheels
    manifest = directory / WHEELHOUSE_MANIFEST
    manifest.unlink(missing_ok=True)
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--disable-pip-version-check",
        "--only-binary=:all:",
        "--implementation",
        "cp",
        "--python-version",
        WHEEL_PYTHON_VERSION,
        "--abi",
        WHEEL_ABI,
        *(arg for plat in WHEEL_PLATFORMS for arg in ("--platform", plat)),
        "-d",
        str(directory),
        *requirements,
    ]
    _say(progress, f"pip download {' '.join(requirements)} -> {directory}")
    _run_streaming(cmd, what="downloading the wheelhouse", progress=progress)
    wheels = _wheel_files(directory)
    if not any(p.name.startswith("torch-") for p in wheels):
        raise ImageError(
            f"pip download of {' '.join(requirements)} left no torch wheel in {directory}"
        )
    data = {
        "key": _wheelhouse_key(requirements),
        "wheels": {p.name: p.stat().st_size for p in wheels},
    }
    tmp = manifest.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    tmp.replace(manifest)
    return wheels


def _train_files(train_dir: Path) -> list[Path]:
    """Files of the train package that go into the image (no caches, no bytecode)."""
    out: list[Path] = []
    for p in sorted(train_dir.rglob("*")):
        rel = p.relative_to(train_dir)
        if any(part == "__pycache__" or part.startswith(".") for part in rel.parts):
            continue
        if p.is_file() and p.suffix not in (".pyc", ".pyo"):
            out.append(p)
    return out


def compute_inputs_hash(
    *,
    dockerfile: Path = DOCKERFILE,
    train_dir: Path = TRAIN_DIR,
    wheels: Iterable[Path] = (),
    base_image_id: str,
    build_args: Mapping[str, str] | None = None,
) -> str:
    """Hash of everything that determines the image: a rebuild is due when it changes.

    Covers the Dockerfile bytes, every file under ``train_dir`` (relative path and bytes),
    the wheel names and sizes, the base image id and the build args.
    """
    h = hashlib.sha256()

    def field(name: str, value: bytes) -> None:
        h.update(name.encode() + b"\0" + str(len(value)).encode() + b"\0" + value)

    field("scheme", _HASH_SCHEME.encode())
    field("dockerfile", dockerfile.read_bytes())
    for p in _train_files(train_dir):
        field("train:" + p.relative_to(train_dir).as_posix(), p.read_bytes())
    for w in sorted(wheels, key=lambda p: p.name):
        field("wheel:" + w.name, str(w.stat().st_size).encode())
    field("base", base_image_id.encode())
    for k, v in sorted((build_args or {}).items()):
        field("arg:" + k, v.encode())
    return h.hexdigest()


def _write_context(
    out: IO[bytes], *, dockerfile: Path, train_dir: Path, wheels: Sequence[Path]
) -> None:
    """Write the build context tar: Dockerfile, train/, wheelhouse/ and nothing else.

    Assembled explicitly so the repo's junk (.venv, runs, caches) never reaches the daemon.
    """
    with tarfile.open(fileobj=out, mode="w") as tar:

        def add_file(src: Path, arcname: str) -> None:
            info = tar.gettarinfo(str(src), arcname=arcname)
            info.uid = info.gid = 0
            info.uname = info.gname = "root"
            with src.open("rb") as f:
                tar.addfile(info, f)

        def add_dir(arcname: str) -> None:
            info = tarfile.TarInfo(arcname)
            info.type = tarfile.DIRTYPE
            info.mode = 0o755
            tar.addfile(info)

        add_file(dockerfile, "Dockerfile")
        add_dir("train")
        for p in _train_files(train_dir):
            add_file(p, "train/" + p.relative_to(train_dir).as_posix())
        add_dir("wheelhouse")
        # COPY of an empty directory is fine, but keep a file so the intent is visible.
        note = b"wheels for the offline build; empty in online mode\n"
        info = tarfile.TarInfo("wheelhouse/README")
        info.size = len(note)
        info.mode = 0o644
        tar.addfile(info, io.BytesIO(note))
        for w in wheels:
            add_file(w, "wheelhouse/" + w.name)
    out.flush()
    out.seek(0)


def _remove_stale_image(
    client: DockerClient, image_id: str, progress: Progress | None
) -> None:
    """Drop the image a rebuild untagged (about 1 GB each), unless something still uses it."""
    with docker_errors(f"removing the previous image {image_id[:19]}"):
        try:
            client.images.remove(image_id, noprune=False)
        except docker.errors.APIError as e:
            # 409: a container or another tag still holds it; keeping it is right then.
            _say(progress, f"kept previous image {image_id[:19]}: {explanation(e)}")
            return
    _say(progress, f"removed previous image {image_id[:19]}")


def _remove_build_containers(client: DockerClient, ids: Sequence[str]) -> list[str]:
    """Force-remove the builder's intermediate containers ``ids`` (an interrupted build's) and
    wait until they are gone; the ids still there after :data:`_CLEANUP_S`.

    Removing the running RUN container also ends the build: its step fails, nothing is tagged.
    The daemon's own ``forcerm`` may be removing them at the same time; both are fine.
    """
    deadline = time.monotonic() + _CLEANUP_S
    left = list(ids)
    while left and time.monotonic() < deadline:
        for cid in list(left):
            try:
                client.api.remove_container(cid, force=True, v=True)
            except docker.errors.NotFound:
                left.remove(cid)
            except docker.errors.APIError:
                pass  # "removal already in progress": look again
        if left:
            time.sleep(0.25)
    return left


def _stream_build(
    client: DockerClient, tag: str, options: Mapping[str, Any], wheels: Sequence[Path],
    progress: Progress | None, running: list[str],
) -> str | None:
    """Send the build context, follow the build's output to ``progress``; the built image's id
    (None when the daemon did not report one). ``options`` are ``api.build``'s keywords;
    ``running`` collects the intermediate containers the builder names, for the clean-up of
    an interrupted build."""
    tail: deque[str] = deque(maxlen=_LOG_TAIL_LINES)
    built_id: str | None = None
    with tempfile.TemporaryFile(prefix="netorch-context-") as context:
        _write_context(
            context, dockerfile=DOCKERFILE, train_dir=TRAIN_DIR, wheels=wheels
        )
        with docker_errors(f"building {tag}", fallback=ImageError):
            stream: Iterable[dict[str, Any]] = client.api.build(
                fileobj=context, custom_context=True, tag=tag, decode=True, **options,
            )
            for chunk in stream:
                if "error" in chunk:
                    detail = str(chunk.get("error", "")).strip()
                    log = "\n".join(f"  {line}" for line in tail)
                    raise ImageError(f"building {tag} failed: {detail}\n{log}")
                if "stream" in chunk:
                    for line in str(chunk["stream"]).splitlines():
                        if line.strip():
                            tail.append(line)
                            _say(progress, line)
                        started = _RUNNING_IN.match(line)
                        if started:
                            running.append(started.group(1))
                elif "status" in chunk:  # pull progress for FROM (online mode)
                    _say(progress, str(chunk["status"]))
                aux = chunk.get("aux")
                if isinstance(aux, dict) and "ID" in aux:
                    built_id = str(aux["ID"])
    return built_id


def image_build_args(offline: bool, base: str,
                     requirements: Sequence[str] = WHEELHOUSE_REQUIREMENTS) -> dict[str, str]:
    """The Dockerfile's build arguments: offline the wheelhouse's requirements; online the
    pinned torch's CUDA build, its wheel index and the runtime requirements from PyPI."""
    if offline:
        return {"BASE_IMAGE": base, "PIP_REQUIREMENTS": " ".join(requirements)}
    return {
        "BASE_IMAGE": base,
        "PIP_REQUIREMENTS": " ".join(RUNTIME_REQUIREMENTS),
        "TORCH_REQUIREMENT": CUDA_TORCH_REQUIREMENT,
        "TORCH_INDEX_URL": TORCH_CUDA_INDEX_URL,
    }


@dataclass(frozen=True)
class ImageBuildSpec:
    """What ``netorch image build`` would build (``--dry-run`` prints it; nothing is built)."""

    tag: str
    mode: str
    base_image: str
    build_args: tuple[tuple[str, str], ...]
    torch: str
    # Offline: the wheelhouse and the wheels it holds (empty: pip would download them first).
    wheelhouse: str | None
    wheels: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"tag": self.tag, "mode": self.mode, "base_image": self.base_image,
                "build_args": dict(self.build_args), "torch": self.torch,
                "wheelhouse": self.wheelhouse, "wheels": list(self.wheels)}


def image_build_spec(
    *, tag: str = DEFAULT_TAG, offline: bool, base_image: str | None = None,
    wheelhouse: Path = WHEELHOUSE_DIR, requirements: Sequence[str] = WHEELHOUSE_REQUIREMENTS,
) -> ImageBuildSpec:
    """The build :func:`build_image` would run for these options; reads the wheelhouse only."""
    base = base_image or (BASE_ROOTFS_TAG if offline else GPU_BASE_IMAGE)
    args = image_build_args(offline, base, requirements)
    wheels: tuple[str, ...] = ()
    if offline and wheelhouse_is_complete(wheelhouse, requirements):
        wheels = tuple(p.name for p in _wheel_files(wheelhouse))
    torch = (f"{TORCH_REQUIREMENT} (CPU build, from the wheelhouse)" if offline else
             f"{CUDA_TORCH_REQUIREMENT} (CUDA build, from {TORCH_CUDA_INDEX_URL})")
    return ImageBuildSpec(tag, "offline" if offline else "online", base,
                          tuple(sorted(args.items())), torch,
                          str(wheelhouse) if offline else None, wheels)


def build_image(
    client: DockerClient,
    *,
    tag: str = DEFAULT_TAG,
    offline: bool,
    base_image: str | None = None,
    force: bool = False,
    progress: Progress | None = None,
    wheelhouse: Path = WHEELHOUSE_DIR,
    requirements: Sequence[str] = WHEELHOUSE_REQUIREMENTS,
) -> ImageBuildResult:
    """Build the training image ``tag`` from docker/Dockerfile through the Docker SDK.

    Offline: the base defaults to :data:`BASE_ROOTFS_TAG` (made with mmdebstrap when absent)
    and torch is installed from ``wheelhouse`` (downloaded on the host when incomplete).
    Online: the base defaults to :data:`GPU_BASE_IMAGE` (a CUDA runtime) and the pinned torch's
    CUDA build is installed from PyTorch's index (:func:`image_build_args`).

    Ctrl-C or SIGTERM during the build stops it: its intermediate containers are removed,
    ``tag`` stays the image it was, and :class:`~orchestrator.errors.Interrupted` says so.

    When ``tag`` already carries the current inputs hash, nothing is built and the result
    says ``up_to_date``; ``force`` rebuilds without the layer cache. Build output lines go
    to ``progress``. Raises ImageError on a failed build, DaemonUnavailableError when no
    daemon answers.
    """
    started = time.monotonic()
    with docker_errors(f"building {tag}"):
        client.ping()

    wheels: list[Path] = []
    if offline:
        base = base_image or BASE_ROOTFS_TAG
        if base == BASE_ROOTFS_TAG:
            base_id: str | None = build_base_rootfs(client, tag=base, progress=progress)
        else:
            base_id = _image_id(client, base)
            if base_id is None:
                raise ImageError(
                    f"offline build: base image {base!r} is not on this host and cannot be "
                    f"pulled offline; omit --base-image to use {BASE_ROOTFS_TAG}"
                )
        wheels = prepare_wheelhouse(
            wheelhouse, requirements=requirements, progress=progress
        )
    else:
        base = base_image or GPU_BASE_IMAGE
        # May be absent: the legacy builder pulls it for FROM.
        base_id = _image_id(client, base)

    build_args = image_build_args(offline, base, requirements)
    inputs_hash = compute_inputs_hash(
        wheels=wheels, base_image_id=base_id or base, build_args=build_args
    )

    if not force and _image_labels(client, tag).get(LABEL_INPUTS_HASH) == inputs_hash:
        image_id = _image_id(client, tag) or ""
        _say(progress, f"{tag} is up to date ({image_id[:19]})")
        return ImageBuildResult(
            tag=tag,
            image_id=image_id,
            inputs_hash=inputs_hash,
            up_to_date=True,
            seconds=time.monotonic() - started,
            offline=offline,
            base_image=base,
        )

    previous_id = _image_id(client, tag)
    _say(progress, f"building {tag} from {base} ({'offline' if offline else 'online'})")
    options: dict[str, Any] = {
        "buildargs": build_args,
        "labels": {
            LABEL_INPUTS_HASH: inputs_hash,
            LABEL_MODE: "offline" if offline else "online",
            LABEL_BASE: base,
        },
        "rm": True,
        "forcerm": True,
        "nocache": force,
        "pull": False,
    }
    running: list[str] = []  # the builder's intermediate containers, as it names them
    try:
        with sigterm_as_interrupt():
            built_id = _stream_build(client, tag, options, wheels, progress, running)
    except KeyboardInterrupt as e:
        left = _remove_build_containers(client, running)
        kept = (f"{tag} is still the previous image {previous_id[:19]}" if previous_id
                else f"{tag} was not created")
        cleaned = ("its intermediate containers were removed" if not left else
                   f"intermediate containers {', '.join(c[:12] for c in left)} are still "
                   "there (docker rm -f them)")
        raise Interrupted(
            f"building {tag} was interrupted ({e or 'Ctrl-C'}): the build stopped, {cleaned}; "
            f"{kept}"
        ) from None

    new_id = _image_id(client, tag)
    if new_id is None or (built_id is not None and built_id != new_id):
        raise ImageError(
            f"the build of {tag} reported success but {tag} is not the built image"
        )
    _say(progress, f"built {tag} ({new_id[:19]})")
    if previous_id is not None and previous_id != new_id:
        _remove_stale_image(client, previous_id, progress)
    return ImageBuildResult(
        tag=tag,
        image_id=new_id,
        inputs_hash=inputs_hash,
        up_to_date=False,
        seconds=time.monotonic() - started,
        offline=offline,
        base_image=base,
    )


def client() -> DockerClient:
    """A client for the local daemon (``DOCKER_HOST`` honoured) that answered; see
    :func:`~orchestrator.backends.docker.connect`."""
    return connect()
