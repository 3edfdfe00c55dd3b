"""The training image: inputs hash (unit) and a real offline build (docker tier)."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import docker
import pytest

from orchestrator import image
from orchestrator.image import (
    LABEL_INPUTS_HASH,
    ImageBuildResult,
    build_image,
    compute_inputs_hash,
    image_exists,
)


@pytest.fixture()
def inputs(tmp_path: Path) -> tuple[Path, Path, Path]:
    dockerfile = tmp_path / "Dockerfile"
    dockerfile.write_text("FROM scratch\n")
    train = tmp_path / "train"
    (train / "sub").mkdir(parents=True)
    (train / "__init__.py").write_text("")
    (train / "sub" / "job.py").write_text("print('rank')\n")
    wheel = tmp_path / "torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl"
    wheel.write_bytes(b"x" * 10)
    return dockerfile, train, wheel


def _hash(dockerfile: Path, train: Path, wheel: Path, base: str = "sha256:aa") -> str:
    return compute_inputs_hash(
        dockerfile=dockerfile, train_dir=train, wheels=[wheel], base_image_id=base
    )


def test_hash_changes_when_a_train_file_changes(inputs: tuple[Path, Path, Path]) -> None:
    dockerfile, train, wheel = inputs
    before = _hash(dockerfile, train, wheel)
    job = train / "sub" / "job.py"
    job.write_text("print('rank 0')\n")
    assert _hash(dockerfile, train, wheel) != before
    job.write_text("print('rank')\n")
    assert _hash(dockerfile, train, wheel) == before


def test_hash_changes_when_a_train_file_is_added_or_renamed(
    inputs: tuple[Path, Path, Path],
) -> None:
    dockerfile, train, wheel = inputs
    before = _hash(dockerfile, train, wheel)
    (train / "sub" / "job.py").rename(train / "sub" / "job2.py")
    renamed = _hash(dockerfile, train, wheel)
    assert renamed != before
    (train / "extra.py").write_text("")
    assert _hash(dockerfile, train, wheel) != renamed


def test_hash_ignores_bytecode_caches(inputs: tuple[Path, Path, Path]) -> None:
    dockerfile, train, wheel = inputs
    before = _hash(dockerfile, train, wheel)
    (train / "__pycache__").mkdir()
    (train / "__pycache__" / "job.cpython-311.pyc").write_bytes(b"\0junk")
    assert _hash(dockerfile, train, wheel) == before


def test_hash_covers_dockerfile_wheels_base_and_args(inputs: tuple[Path, Path, Path]) -> None:
    dockerfile, train, wheel = inputs
    before = _hash(dockerfile, train, wheel)
    assert _hash(dockerfile, train, wheel, base="sha256:bb") != before
    assert (
        compute_inputs_hash(
            dockerfile=dockerfile,
            train_dir=train,
            wheels=[wheel],
            base_image_id="sha256:aa",
            build_args={"PIP_REQUIREMENTS": "torch"},
        )
        != before
    )
    wheel.write_bytes(b"x" * 11)
    assert _hash(dockerfile, train, wheel) != before
    wheel.write_bytes(b"x" * 10)
    dockerfile.write_text("FROM scratch\nLABEL a=b\n")
    assert _hash(dockerfile, train, wheel) != before


def test_build_context_holds_only_dockerfile_train_and_wheels(
    inputs: tuple[Path, Path, Path],
) -> None:
    dockerfile, train, wheel = inputs
    (train / "__pycache__").mkdir()
    (train / "__pycache__" / "x.pyc").write_bytes(b"")
    (train / ".venv").mkdir()
    (train / ".venv" / "junk").write_text("")
    buf = io.BytesIO()
    image._write_context(buf, dockerfile=dockerfile, train_dir=train, wheels=[wheel])
    with tarfile.open(fileobj=buf) as tar:
        files = sorted(m.name for m in tar.getmembers() if m.isfile())
    assert files == [
        "Dockerfile",
        "train/__init__.py",
        "train/sub/job.py",
        "wheelhouse/README",
        f"wheelhouse/{wheel.name}",
    ]


def test_wheelhouse_manifest_detects_incomplete_download(tmp_path: Path) -> None:
    reqs = ("torch==2.13.0+cpu",)
    assert not image.wheelhouse_is_complete(tmp_path, reqs)
    w = tmp_path / "torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl"
    w.write_bytes(b"12345")
    manifest = {"key": image._wheelhouse_key(reqs), "wheels": {w.name: 5}}
    (tmp_path / image.WHEELHOUSE_MANIFEST).write_text(json.dumps(manifest))
    assert image.wheelhouse_is_complete(tmp_path, reqs)
    assert not image.wheelhouse_is_complete(tmp_path, ("torch==2.12.0",))
    w.write_bytes(b"123")  # truncated download
    assert not image.wheelhouse_is_complete(tmp_path, reqs)


# --- docker tier ---------------------------------------------------------------------------


@pytest.fixture(scope="session")
def offline_image(docker_client: docker.DockerClient) -> ImageBuildResult:
    """The offline image, built (or found up to date) once per session."""
    return build_image(docker_client, tag=image.DEFAULT_TAG, offline=True)


@pytest.mark.docker
def test_offline_build_leaves_a_labelled_image(
    docker_client: docker.DockerClient,
    offline_image: ImageBuildResult,
) -> None:
    assert image_exists(docker_client, offline_image.tag)
    img = docker_client.images.get(offline_image.tag)
    assert img.id == offline_image.image_id
    assert img.labels[LABEL_INPUTS_HASH] == offline_image.inputs_hash
    assert not image_exists(docker_client, "netorch-test-absent:never")


@pytest.mark.docker
def test_second_build_is_a_no_op(
    docker_client: docker.DockerClient,
    offline_image: ImageBuildResult,
) -> None:
    lines: list[str] = []
    again = build_image(
        docker_client, tag=offline_image.tag, offline=True, progress=lines.append
    )
    assert again.up_to_date
    assert again.image_id == offline_image.image_id
    assert again.inputs_hash == offline_image.inputs_hash
    assert any("up to date" in line for line in lines)
    assert not any(line.startswith("Step ") for line in lines)


@pytest.mark.docker
def test_image_runs_torch_torchrun_and_network_tools(
    docker_client: docker.DockerClient,
    offline_image: ImageBuildResult,
) -> None:
    script = (
        "set -e; "
        "python -c 'import torch, train; print(\"TORCH\", torch.__version__)'; "
        "ip -V; ip link show lo; ping -V; iperf3 --version; "
        "torchrun --help >/dev/null && echo TORCHRUN-OK; "
        "pwd; "
        "if ls /tmp/wheelhouse/*.whl >/dev/null 2>&1; then echo WHEELS-LEFT; fi"
    )
    out = docker_client.containers.run(
        offline_image.tag,
        ["sh", "-c", script],
        remove=True,
        network_mode="none",
        init=True,
        stdout=True,
        stderr=True,
    ).decode()
    assert "TORCH 2.13.0" in out
    assert "iproute2" in out
    assert "LOOPBACK" in out
    assert "iputils" in out
    assert "iperf 3" in out
    assert "TORCHRUN-OK" in out
    assert "/opt/netorch" in out
    assert "WHEELS-LEFT" not in out
    assert "Failed to initialize NumPy" not in out


@pytest.mark.docker
def test_build_json_prints_the_result(offline_image: ImageBuildResult) -> None:
    import subprocess
    import sys

    from conftest import netorch_env

    proc = subprocess.run([sys.executable, "-m", "orchestrator.cli", "image", "build", "--tag",
                           offline_image.tag, "--json"], capture_output=True, text=True,
                          env=netorch_env(), timeout=300)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)  # stdout holds the JSON alone
    assert result["up_to_date"] is True and result["image_id"] == offline_image.image_id
    assert result["tag"] == offline_image.tag
