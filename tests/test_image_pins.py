"""The GPU image runs the torch everything else pins: one version (orchestrator/versions.py),
read by the Makefile, held equal to pyproject.toml's extra, installed by both image modes; and
``netorch image build --dry-run`` says what would be built without building (no daemon needed).

The CUDA wheels cannot be downloaded on this kind of machine: what is tested offline is the
Dockerfile's build arguments and the wheels chosen; a GPU machine builds it for real.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tomllib

from conftest import REPO, netorch_env
from orchestrator.image import (
    CUDA_TORCH_REQUIREMENT,
    DOCKERFILE,
    TORCH_REQUIREMENT,
    WHEELHOUSE_REQUIREMENTS,
    image_build_args,
)
from orchestrator.versions import GPU_BASE_IMAGE, TORCH_CUDA, TORCH_CUDA_INDEX_URL, TORCH_VERSION


def dry_run(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**netorch_env(), "DOCKER_HOST": "unix:///nonexistent/docker.sock"}  # no daemon used
    return subprocess.run([sys.executable, "-m", "orchestrator.cli", "image", "build",
                           "--dry-run", *args], capture_output=True, text=True, env=env,
                          timeout=60, cwd=REPO)


def test_one_torch_version_everywhere() -> None:
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert pyproject["project"]["optional-dependencies"]["torch"] == [f"torch=={TORCH_VERSION}"]
    make = subprocess.run(["make", "-s", "-f", "Makefile", "--eval",
                           "print-torch: ; @echo $(TORCH_SPEC)", "print-torch"],
                          capture_output=True, text=True, cwd=REPO, timeout=60)
    assert make.stdout.strip() == f"torch=={TORCH_VERSION}", make.stderr
    assert TORCH_REQUIREMENT == f"torch=={TORCH_VERSION}+cpu"
    assert CUDA_TORCH_REQUIREMENT == f"torch=={TORCH_VERSION}"


def test_gpu_build_args_install_the_pinned_cuda_torch_on_a_cuda_runtime() -> None:
    args = image_build_args(False, GPU_BASE_IMAGE)
    assert args["TORCH_REQUIREMENT"] == f"torch=={TORCH_VERSION}"
    assert args["TORCH_INDEX_URL"] == TORCH_CUDA_INDEX_URL.rstrip("/")
    assert TORCH_CUDA_INDEX_URL.endswith(f"/whl/{TORCH_CUDA}")
    assert "torch" not in args["PIP_REQUIREMENTS"]  # only from the CUDA index
    base = re.fullmatch(r"nvidia/cuda:(\d+)\.(\d+)\.\d+-(?:cudnn-)?runtime-ubuntu\d+\.\d+",
                        GPU_BASE_IMAGE)
    assert base, GPU_BASE_IMAGE
    assert TORCH_CUDA == f"cu{base.group(1)}{base.group(2)}"  # the wheels' CUDA = the base's


def test_dockerfile_declares_every_build_arg_and_defaults_to_the_gpu_base() -> None:
    text = DOCKERFILE.read_text()
    declared = set(re.findall(r"^ARG (\w+)", text, re.M))
    for offline in (True, False):
        assert set(image_build_args(offline, "base")) <= declared
    assert f"ARG BASE_IMAGE={GPU_BASE_IMAGE}\n" in text
    assert "pytorch/pytorch:" not in text
    # The online branch installs exactly the requirement from exactly the index.
    assert '--index-url "${TORCH_INDEX_URL}" "${TORCH_REQUIREMENT}"' in text


def test_dry_run_online_prints_the_build() -> None:
    proc = dry_run("--online")
    assert proc.returncode == 0, proc.stderr
    assert f"from {GPU_BASE_IMAGE}" in proc.stdout
    assert f"build arg TORCH_REQUIREMENT=torch=={TORCH_VERSION}" in proc.stdout
    assert f"build arg TORCH_INDEX_URL={TORCH_CUDA_INDEX_URL}" in proc.stdout
    spec = json.loads(dry_run("--online", "--json", "--tag", "x:y").stdout)
    assert spec["tag"] == "x:y" and spec["mode"] == "online" and spec["wheels"] == []
    assert spec["build_args"] == image_build_args(False, GPU_BASE_IMAGE)


def test_dry_run_offline_names_the_wheels() -> None:
    spec = json.loads(dry_run("--json").stdout)
    assert spec["mode"] == "offline" and spec["base_image"] == "netorch-base:bookworm"
    assert spec["build_args"]["PIP_REQUIREMENTS"] == " ".join(WHEELHOUSE_REQUIREMENTS)
    if spec["wheels"]:  # after `make image`: the wheels the build would install
        torch = [w for w in spec["wheels"] if w.startswith("torch-")]
        assert len(torch) == 1 and torch[0].startswith(f"torch-{TORCH_VERSION}+cpu-cp311-")
    else:
        assert "none yet" in dry_run().stdout
