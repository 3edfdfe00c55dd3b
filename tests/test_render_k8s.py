"""The Kubernetes renderer: field-by-field equality with the plan, names, errors, the CLI, and
offline schema validation of every rendered object with ``kubernetes-validate`` (which ships the
Kubernetes JSON schemas; nothing is fetched at test time).

PyTorchJob and JobSet are CRDs, for which kubernetes-validate has no schema: their pod / Job
templates are wrapped into a ``v1`` Pod / ``batch/v1`` Job and validated as such, and their own
fields are checked one by one here.
"""

from __future__ import annotations

import dataclasses
import os
import re
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from kubernetes_validate.utils import latest_version
from typer.testing import CliRunner

from orchestrator.cli import app
from orchestrator.errors import PlanError
from orchestrator.plan import LABEL_RANK, LABEL_ROLE, LABEL_RUN, ClusterPlan, build_plan
from orchestrator.render.k8s import (
    FLAVORS,
    JOB_INDEX_ANNOTATION,
    MASTER_WAIT_S,
    WAIT_CONTAINER,
    WAIT_SCRIPT,
    dump_k8s,
    is_dns_label,
    is_dns_subdomain,
    k8s_file_name,
    k8s_name,
    master_addr,
    render_k8s,
    service_selector,
    shm_quantity,
    write_k8s,
)
from orchestrator.settings import load_settings
from orchestrator.userjob import run_workload

pytestmark = pytest.mark.usefixtures("isolated")

RUN = "20261128-120000-abcd"
JOB = f"netorch-{RUN}"
# The validator's default Kubernetes version (its newest bundled schemas), as its CLI uses.
K8S_VERSION = latest_version()
DNS_1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")



def make_plan(run_id: str = RUN, **overrides: Any) -> ClusterPlan:
    return build_plan(load_settings(overrides=overrides), run_id, "docker")


def make_run_plan(base: Path, run_id: str = RUN, **overrides: Any) -> ClusterPlan:
    """A user's job (``render k8s ... -- COMMAND``); relative paths resolve against ``base``."""
    settings = load_settings(overrides=overrides)
    return build_plan(settings, run_id, "docker", run_workload(settings, base, in_node_paths=True))


def pod_templates(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every pod template of the objects (indexed-job: 1, pytorchjob: 1 per role, jobset: 1)."""
    found: list[dict[str, Any]] = []
    for obj in objects:
        if obj["kind"] == "Job":
            found.append(obj["spec"]["template"])
        elif obj["kind"] == "PyTorchJob":
            found.extend(r["template"] for r in obj["spec"]["pytorchReplicaSpecs"].values())
        elif obj["kind"] == "JobSet":
            found.extend(rj["template"]["spec"]["template"] for rj in obj["spec"]["replicatedJobs"])
    return found


def by_kind(objects: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {o["kind"]: o for o in objects}


def pod_spec(plan: ClusterPlan, **kw: Any) -> dict[str, Any]:
    spec: dict[str, Any] = by_kind(render_k8s(plan, **kw))["Job"]["spec"]["template"]["spec"]
    return spec


def container(plan: ClusterPlan, **kw: Any) -> dict[str, Any]:
    ctr: dict[str, Any] = pod_spec(plan, **kw)["containers"][0]
    return ctr


def env_of(ctr: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {item["name"]: item for item in ctr["env"]}


# --- indexed-job: the Job ----------------------------------------------------------------------


def test_indexed_job_shape() -> None:
    plan = make_plan(cluster={"nodes": 4})
    objects = render_k8s(plan)
    assert [o["kind"] for o in objects] == ["NetworkPolicy", "Service", "Job"]
    job = objects[2]
    assert job["apiVersion"] == "batch/v1"
    assert job["metadata"]["name"] == JOB == k8s_name(plan)
    spec = job["spec"]
    assert spec["completionMode"] == "Indexed"
    assert spec["completions"] == spec["parallelism"] == 4 == plan.nnodes
    assert spec["backoffLimit"] == 0
    pod = spec["template"]["spec"]
    assert pod["restartPolicy"] == "Never"
    assert pod["terminationGracePeriodSeconds"] == plan.runtime.stop_timeout_s
    assert pod["shareProcessNamespace"] is True  # plan.runtime.init
    assert "hostIPC" not in pod
    assert len(pod["containers"]) == 1
    assert pod["containers"][0]["image"] == plan.runtime.image


def test_env_equals_plan_in_order() -> None:
    plan = make_plan(env={"NCCL_DEBUG": "INFO", "NCCL_IB_DISABLE": "0"})
    ctr = container(plan)
    rendered = [item["name"] for item in ctr["env"]]
    planned = [k for k, _ in plan.master.env if k != "NETORCH_PLANNED_IP"]
    assert rendered == planned  # same names, same order (user env last)
    env = env_of(ctr)
    per_node = {"MASTER_ADDR", "NODE_RANK", "NETORCH_NODE_NAME"}
    for key, value in plan.master.env:
        if key in per_node or key == "NETORCH_PLANNED_IP":
            continue
        assert env[key] == {"name": key, "value": value}, key
    assert env["NCCL_SOCKET_IFNAME"]["value"] == "=eth0"
    assert env["GLOO_SOCKET_IFNAME"]["value"] == "eth0"
    assert env["NCCL_IB_DISABLE"]["value"] == "0"  # the user's value wins, as in the plan
    assert env["NCCL_DEBUG"]["value"] == "INFO"
    assert "NETORCH_PLANNED_IP" not in env  # pods have no planned IP
    assert "NVIDIA_DRIVER_CAPABILITIES" not in env  # no GPUs requested
    assert env["NETORCH_NODE_NAME"] == {
        "name": "NETORCH_NODE_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}},
    }


def test_node_rank_from_downward_api() -> None:
    env = env_of(container(make_plan()))
    assert env["NODE_RANK"] == {
        "name": "NODE_RANK",
        "valueFrom": {"fieldRef": {
            "fieldPath": "metadata.annotations['batch.kubernetes.io/job-completion-index']",
        }},
    }
    assert JOB_INDEX_ANNOTATION == "batch.kubernetes.io/job-completion-index"
    assert "value" not in env["NODE_RANK"]


def test_master_addr_is_index0_dns_name() -> None:
    plan = make_plan()
    _, service, job = render_k8s(plan)
    addr = env_of(job["spec"]["template"]["spec"]["containers"][0])["MASTER_ADDR"]["value"]
    assert addr == f"{JOB}-0.{JOB}" == master_addr(plan)
    # <hostname of index 0 = <job>-0>.<subdomain = the Service>
    assert addr == f"{job['metadata']['name']}-0.{service['metadata']['name']}"
    assert addr != plan.master_addr  # the plan's fixed IP does not apply


def test_command_flags_equal_plan_except_rank_and_addr() -> None:
    plan = make_plan(cluster={"nodes": 3, "procs_per_node": 2, "master_port": 29600})
    ctr = container(plan)
    assert "command" not in ctr  # args, like Docker's command: keeps the image's ENTRYPOINT
    args = ctr["args"]
    for node in plan.nodes:  # one template serves every node
        expected = list(node.command)
        expected[expected.index("--node-rank") + 1] = "$(NODE_RANK)"
        expected[expected.index("--master-addr") + 1] = "$(MASTER_ADDR)"
        assert args == expected
    assert args[:4] == ["python", "-P", "-m", "train.launch"]
    assert args[args.index("--nnodes") + 1] == "3"
    assert args[args.index("--nproc-per-node") + 1] == "2"
    assert args[args.index("--master-port") + 1] == "29600"
    assert args[args.index("--max-restarts") + 1] == "0"
    # $(NODE_RANK) / $(MASTER_ADDR) expand because both are in the container's env
    names = {item["name"] for item in ctr["env"]}
    assert {"NODE_RANK", "MASTER_ADDR"} <= names


def test_dollar_escaped_in_user_env() -> None:
    env = env_of(container(make_plan(env={"NCCL_DEBUG_FILE": "/tmp/nccl.$(HOST).%h", "TORCH_X": "a$b"})))
    assert env["NCCL_DEBUG_FILE"]["value"] == "/tmp/nccl.$$(HOST).%h"  # kubelet: $$ -> $
    assert env["TORCH_X"]["value"] == "a$$b"


def test_gpu_limits_per_node() -> None:
    plan = make_plan(gpu={"per_node": 4})
    ctr = container(plan)
    assert ctr["resources"] == {"limits": {"nvidia.com/gpu": 4}}
    assert isinstance(ctr["resources"]["limits"]["nvidia.com/gpu"], int)
    env = env_of(ctr)
    assert env["NVIDIA_DRIVER_CAPABILITIES"]["value"] == "compute,utility"


def test_no_gpu_no_resources() -> None:
    assert "resources" not in container(make_plan())


def test_device_ids_raise_plan_error() -> None:
    plan = make_plan(gpu={"device_ids": [["0", "1"], ["2", "3"]]})
    for flavor in FLAVORS:
        with pytest.raises(PlanError, match=r"gpu.per_node = 2"):
            render_k8s(plan, flavor)  # type: ignore[arg-type]


def test_host_mounts_raise_plan_error() -> None:
    import dataclasses

    import orchestrator.plan as plan_module

    plan = make_plan()
    mount_type = getattr(plan_module, "MountSpec", None)  # newer plans carry bind mounts
    if mount_type is None:
        pytest.skip("this plan has no mounts")
    master = dataclasses.replace(plan.master, mounts=(mount_type("/srv/ckpt", "/netorch/checkpoints"),))
    mounted = dataclasses.replace(plan, nodes=(master, *plan.nodes[1:]))
    with pytest.raises(PlanError, match="bind-mounts host directory /srv/ckpt"):
        render_k8s(mounted)


def test_unknown_gpu_driver_raises() -> None:
    with pytest.raises(PlanError, match="gpu.driver 'tpu'"):
        render_k8s(make_plan(gpu={"per_node": 1, "driver": "tpu"}))


def test_shm_volume_and_mount() -> None:
    plan = make_plan(docker={"shm_size": "2g"})
    pod = pod_spec(plan)
    assert pod["volumes"] == [{"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "2Gi"}}]
    assert pod["containers"][0]["volumeMounts"] == [{"name": "dshm", "mountPath": "/dev/shm"}]


@pytest.mark.parametrize(("docker", "k8s"), [
    ("1g", "1Gi"), ("512m", "512Mi"), ("64k", "64Ki"), ("1048576", "1048576"), ("100b", "100"),
    ("1G", "1Gi"),
])
def test_shm_quantity(docker: str, k8s: str) -> None:
    assert shm_quantity(docker) == k8s


def test_shm_quantity_rejects_garbage() -> None:
    with pytest.raises(PlanError, match="shm_size"):
        shm_quantity("lots")


def test_runtime_options() -> None:
    plan = make_plan(docker={"ipc_mode": "host", "stop_timeout_s": 30})
    pod = pod_spec(plan)
    assert pod["hostIPC"] is True
    assert pod["terminationGracePeriodSeconds"] == 30
    with pytest.raises(PlanError, match="ipc_mode"):
        render_k8s(make_plan(docker={"ipc_mode": "container:foo"}))


# --- indexed-job: the headless Service ---------------------------------------------------------


def test_headless_service_selects_job_pods() -> None:
    plan = make_plan(cluster={"master_port": 29555})
    _, service, job = render_k8s(plan)
    assert service["apiVersion"] == "v1"
    spec = service["spec"]
    assert spec["clusterIP"] == "None"
    assert spec["publishNotReadyAddresses"] is True
    template = job["spec"]["template"]
    pod_labels = template["metadata"]["labels"]
    assert spec["selector"] == service_selector(plan)
    assert spec["selector"].items() <= pod_labels.items()
    assert spec["selector"][LABEL_RUN] == RUN  # only this run's pods
    assert template["spec"]["subdomain"] == service["metadata"]["name"]
    assert spec["ports"] == [{"name": "c10d", "port": 29555, "targetPort": 29555, "protocol": "TCP"}]
    assert template["spec"]["containers"][0]["ports"] == [
        {"name": "c10d", "containerPort": 29555, "protocol": "TCP"}]


def test_labels_plan_plus_app() -> None:
    plan = make_plan()
    _, service, job = render_k8s(plan)
    for labels in (service["metadata"]["labels"], job["metadata"]["labels"],
                   job["spec"]["template"]["metadata"]["labels"]):
        assert dict(plan.labels).items() <= labels.items()
        assert labels["app.kubernetes.io/name"] == "netorch"
        assert labels["app.kubernetes.io/part-of"] == "netorch"
        assert labels["app.kubernetes.io/instance"] == JOB


def test_namespace() -> None:
    plan = make_plan()
    assert all("namespace" not in o["metadata"] for o in render_k8s(plan))
    for flavor in FLAVORS:
        objects = render_k8s(plan, flavor, namespace="ml-team")  # type: ignore[arg-type]
        assert all(o["metadata"]["namespace"] == "ml-team" for o in objects)
    for bad in ("ML", "-x", "a" * 64, "a.b"):
        with pytest.raises(PlanError, match="namespace"):
            render_k8s(plan, namespace=bad)


def test_unknown_flavor() -> None:
    with pytest.raises(PlanError, match="flavor 'helm'"):
        render_k8s(make_plan(), "helm")  # type: ignore[arg-type]


def test_pure_and_unshared() -> None:
    plan = make_plan(gpu={"per_node": 1})
    for flavor in FLAVORS:
        a = render_k8s(plan, flavor)  # type: ignore[arg-type]
        assert a == render_k8s(plan, flavor)  # type: ignore[arg-type]
        assert dump_k8s(plan, flavor) == dump_k8s(plan, flavor)  # type: ignore[arg-type]
        assert "&id" not in dump_k8s(plan, flavor)  # type: ignore[arg-type]  # no YAML aliases
    _, service, job = render_k8s(plan)
    job["metadata"]["labels"]["x"] = "y"  # one object's labels are not another's
    assert "x" not in job["spec"]["template"]["metadata"]["labels"]
    assert "x" not in service["metadata"]["labels"]


# --- names -------------------------------------------------------------------------------------


def derived_names(plan: ClusterPlan, flavor: str) -> list[str]:
    """Every name Kubernetes or a controller derives from ours (pods' hostnames, Services)."""
    name = k8s_name(plan, flavor)  # type: ignore[arg-type]
    last = plan.nnodes - 1
    if flavor == "pytorchjob":
        return [name, f"{name}-master-0", f"{name}-worker-{last - 1 if last else 0}"]
    if flavor == "jobset":
        return [name, f"{name}-node-0", f"{name}-node-0-{last}"]
    return [name, f"{name}-{last}"]


@pytest.mark.parametrize("flavor", FLAVORS)
def test_names_dns_labels_long_inputs(flavor: str) -> None:
    long_run = "r" + "0123456789abcdef" * 2  # 33 > 32: use the longest the plan accepts
    long_run = long_run[:32]
    plan = make_plan(long_run, cluster={"name": "Very_Long.Cluster-Name24", "nodes": 256})
    for name in derived_names(plan, flavor):
        assert is_dns_label(name), name
        assert len(name) <= 63, name
    assert DNS_1035.match(k8s_name(plan, flavor))  # type: ignore[arg-type]  # a Service name
    other = make_plan(long_run[:-1] + "x", cluster={"name": "Very_Long.Cluster-Name24", "nodes": 256})
    assert k8s_name(plan, flavor) != k8s_name(other, flavor)  # type: ignore[arg-type]


def test_names_sanitised() -> None:
    assert k8s_name(make_plan(cluster={"name": "My_Cluster.A"})) == f"my-cluster-a-{RUN}"
    assert k8s_name(make_plan(cluster={"name": "9lives"})) == f"nt-9lives-{RUN}"
    assert k8s_name(make_plan()) == JOB  # short names are kept as they are


def test_is_dns_label() -> None:
    assert is_dns_label("a-1")
    for bad in ("", "A", "a_b", "-a", "a-", "a" * 64):
        assert not is_dns_label(bad)


# --- pytorchjob --------------------------------------------------------------------------------


def test_pytorchjob_replicas_and_env() -> None:
    plan = make_plan(cluster={"nodes": 4, "master_port": 29511}, gpu={"per_node": 2})
    _, obj = render_k8s(plan, "pytorchjob")
    assert obj["apiVersion"] == "kubeflow.org/v1"
    assert obj["kind"] == "PyTorchJob"
    assert obj["spec"]["runPolicy"]["backoffLimit"] == 0
    specs = obj["spec"]["pytorchReplicaSpecs"]
    assert list(specs) == ["Master", "Worker"]
    assert specs["Master"]["replicas"] == 1
    assert specs["Worker"]["replicas"] == 3 == plan.nnodes - 1
    for role, spec in specs.items():
        assert spec["restartPolicy"] == "Never"
        pod = spec["template"]["spec"]
        ctr = pod["containers"][0]
        assert ctr["name"] == "pytorch"  # the only container the operator configures
        env = env_of(ctr)
        # the operator injects these: ours would conflict
        assert not {"MASTER_ADDR", "MASTER_PORT", "WORLD_SIZE", "RANK", "NODE_RANK"} & set(env)
        assert env["NCCL_SOCKET_IFNAME"]["value"] == "=eth0"
        assert env["NNODES"]["value"] == "4"
        args = ctr["args"]
        assert args[args.index("--node-rank") + 1] == "$(RANK)"
        assert args[args.index("--master-addr") + 1] == "$(MASTER_ADDR)"
        assert args[args.index("--nnodes") + 1] == "4"
        assert args[args.index("--master-port") + 1] == "29511"
        assert ctr["resources"] == {"limits": {"nvidia.com/gpu": 2}}
        assert pod["volumes"][0]["emptyDir"] == {"medium": "Memory", "sizeLimit": "1Gi"}
        assert spec["template"]["metadata"]["labels"][LABEL_ROLE] == role.lower()
    master = specs["Master"]["template"]
    assert master["metadata"]["labels"][LABEL_RANK] == "0"
    assert master["spec"]["containers"][0]["ports"] == [
        {"name": "pytorchjob-port", "containerPort": 29511, "protocol": "TCP"}]
    assert "ports" not in specs["Worker"]["template"]["spec"]["containers"][0]
    assert master_addr(plan, "pytorchjob") == f"{JOB}-master-0"


def test_pytorchjob_single_node_has_no_workers() -> None:
    _, obj = render_k8s(make_plan(cluster={"nodes": 1}), "pytorchjob")
    assert list(obj["spec"]["pytorchReplicaSpecs"]) == ["Master"]


# --- jobset ------------------------------------------------------------------------------------


def test_jobset() -> None:
    plan = make_plan(cluster={"nodes": 3})
    _, obj = render_k8s(plan, "jobset")
    assert obj["apiVersion"] == "jobset.x-k8s.io/v1alpha2"
    assert obj["kind"] == "JobSet"
    spec = obj["spec"]
    assert spec["network"] == {"enableDNSHostnames": True}
    assert spec["failurePolicy"] == {"maxRestarts": 0}
    (rj,) = spec["replicatedJobs"]
    assert rj["name"] == "node" and rj["replicas"] == 1
    job = rj["template"]["spec"]
    assert job["completionMode"] == "Indexed"
    assert job["completions"] == job["parallelism"] == 3
    assert job["backoffLimit"] == 0
    env = env_of(job["template"]["spec"]["containers"][0])
    assert env["MASTER_ADDR"]["value"] == f"{JOB}-node-0-0.{JOB}"
    assert "fieldRef" in env["NODE_RANK"]["valueFrom"]
    assert "subdomain" not in job["template"]["spec"]  # JobSet sets it


# --- file and CLI ------------------------------------------------------------------------------


def test_write_k8s_multi_doc(tmp_path: Path) -> None:
    plan = make_plan(docker={"memlock": 65536})
    (path,) = write_k8s(plan, tmp_path / "out")
    assert path == tmp_path / "out" / f"netorch-{RUN}.yaml" == tmp_path / "out" / k8s_file_name(plan)
    text = path.read_text()
    assert text.startswith("# Generated by netorch")
    assert f"kubectl apply -f netorch-{RUN}.yaml" in text
    assert "docker.memlock=65536" in text  # what cannot be expressed is said, not dropped silently
    assert list(yaml.safe_load_all(text)) == render_k8s(plan)


def test_write_k8s_error_writes_nothing(tmp_path: Path) -> None:
    with pytest.raises(PlanError):
        write_k8s(make_plan(gpu={"device_ids": [["0"], ["1"]]}), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_cli_render_k8s(tmp_path: Path) -> None:
    out = tmp_path / "k8s"
    result = CliRunner().invoke(app, [
        "render", "k8s", "-o", str(out), "--run-id", RUN, "--nodes", "3",
        "--flavor", "pytorchjob", "--namespace", "ml",
    ])
    assert result.exit_code == 0, result.output
    _, obj = yaml.safe_load_all((out / f"netorch-{RUN}.yaml").read_text())
    assert obj["kind"] == "PyTorchJob"
    assert obj["metadata"]["namespace"] == "ml"
    assert obj["spec"]["pytorchReplicaSpecs"]["Worker"]["replicas"] == 2
    default = CliRunner().invoke(app, ["render", "k8s", "-o", str(out), "--run-id", "abc-1"])
    assert default.exit_code == 0, default.output
    kinds = [o["kind"] for o in yaml.safe_load_all((out / "netorch-abc-1.yaml").read_text())]
    assert kinds == ["NetworkPolicy", "Service", "Job"]


def test_cli_errors(tmp_path: Path) -> None:
    bad = CliRunner().invoke(app, ["render", "k8s", "-o", str(tmp_path), "--flavor", "helm"])
    assert bad.exit_code == 2
    assert "helm" in bad.output and "Traceback" not in bad.output
    cfg = tmp_path / "gpu.toml"
    cfg.write_text('[gpu]\ndevice_ids = [["0"], ["1"]]\n')
    ids = CliRunner().invoke(app, ["render", "k8s", "-o", str(tmp_path / "o"), "-c", str(cfg)])
    assert ids.exit_code == 2
    assert "gpu.per_node" in ids.output


# --- a user's job: mounts and working directory ------------------------------------------------


@pytest.fixture()
def project(tmp_path: Path) -> Path:
    for sub in ("code", "data", "we$ird dir"):
        (tmp_path / sub).mkdir()
    return tmp_path


def user_job(project: Path, **run: Any) -> ClusterPlan:
    settings: dict[str, Any] = {
        "command": ["python", "train.py", "--steps", "60"], "workdir": "code",
        "checkpoint_dir": "ck", "image": "my/ddp:1.0",
        "mounts": ["./data:/data:ro", "./we$ird dir:/odd", "datasets.v1:/datasets:ro",
                   "scratch:/scratch", "scratch:/scratch-ro:ro"],
        "env": {"MY_SETTING": "a=b"}}
    settings.update(run)
    return make_run_plan(project, cluster={"nodes": 3}, run=settings)


@pytest.mark.parametrize("flavor", FLAVORS)
def test_run_job_mounts_and_workdir(project: Path, flavor: str) -> None:
    plan = user_job(project)
    templates = pod_templates(render_k8s(plan, flavor))  # type: ignore[arg-type]
    assert templates
    for template in templates:
        pod = template["spec"]
        assert pod["volumes"][0]["name"] == "dshm"
        assert pod["volumes"][1:] == [
            {"name": "mount-0", "hostPath": {"path": str(project / "code"), "type": "Directory"}},
            {"name": "mount-1", "hostPath": {"path": str(project / "ck"), "type": "Directory"}},
            {"name": "mount-2", "hostPath": {"path": str(project / "data"), "type": "Directory"}},
            # Paths are not $(VAR)-expanded by the kubelet, so "$" stays single.
            {"name": "mount-3", "hostPath": {"path": str(project / "we$ird dir"),
                                             "type": "Directory"}},
            {"name": "mount-4", "persistentVolumeClaim": {"claimName": "datasets.v1"}},
            # One claim mounted twice is one volume.
            {"name": "mount-5", "persistentVolumeClaim": {"claimName": "scratch"}},
        ]
        ctr = pod["containers"][0]
        assert ctr["image"] == "my/ddp:1.0"
        assert ctr["workingDir"] == "/workspace" == plan.workdir
        assert ctr["volumeMounts"] == [
            {"name": "dshm", "mountPath": "/dev/shm"},
            {"name": "mount-0", "mountPath": "/workspace", "readOnly": True},
            {"name": "mount-1", "mountPath": "/checkpoints"},
            {"name": "mount-2", "mountPath": "/data", "readOnly": True},
            {"name": "mount-3", "mountPath": "/odd"},
            {"name": "mount-4", "mountPath": "/datasets", "readOnly": True},
            {"name": "mount-5", "mountPath": "/scratch"},
            {"name": "mount-5", "mountPath": "/scratch-ro", "readOnly": True},
        ]
        assert ctr["args"][-3:] == ["train.py", "--steps", "60"]
        env = env_of(ctr)
        assert env["MY_SETTING"]["value"] == "a=b"
        assert env["NETORCH_CHECKPOINT_DIR"]["value"] == "/checkpoints"


def test_bench_has_no_working_dir_or_extra_volumes() -> None:
    pod = pod_spec(make_plan())
    assert "workingDir" not in pod["containers"][0]
    assert [v["name"] for v in pod["volumes"]] == ["dshm"]


@pytest.mark.parametrize("name", ["My_Data", "data_1", "data-", "a..b", "x" * 254])
def test_volume_that_is_not_a_claim_name_is_refused(project: Path, name: str) -> None:
    plan = user_job(project, mounts=[f"{name}:/data"])
    for flavor in FLAVORS:
        with pytest.raises(PlanError) as info:
            render_k8s(plan, flavor)  # type: ignore[arg-type]
        message = str(info.value)
        assert "\n" not in message
        assert f"named volume {name!r} (mounted at /data)" in message
        assert "PersistentVolumeClaim" in message and "lowercase" in message


def test_claim_name_hint_is_a_claim_name(project: Path) -> None:
    with pytest.raises(PlanError, match=r"e\.g\. 'my-data'"):
        render_k8s(user_job(project, mounts=["My_Data:/data"]))


def test_is_dns_subdomain() -> None:
    assert is_dns_subdomain("scratch") and is_dns_subdomain("datasets.v1")
    assert is_dns_subdomain("a" * 63 + "." + "b" * 63)
    assert is_dns_subdomain("a" * 253) and not is_dns_subdomain("a" * 254)  # Kubernetes' rule
    assert not any(map(is_dns_subdomain, ["", "Data", "a_b", "a..b", ".a", "a.", "-a", "a-"]))


def test_train_job_checkpoints_on_the_master_only_are_refused() -> None:
    """netorch's own train job mounts its checkpoints on the master alone: no shared template."""
    plan = build_plan(load_settings(), RUN, "docker", "train")
    assert plan.master.mounts and not plan.nodes[1].mounts
    for flavor in FLAVORS:
        with pytest.raises(PlanError, match=r"-master bind-mounts host directory .* but not every "
                                            r"node does.*PersistentVolumeClaim"):
            render_k8s(plan, flavor)  # type: ignore[arg-type]


def test_different_placeholders_per_node_are_refused(project: Path) -> None:
    plan = user_job(project, command=["python", "train.py", "--shard", "{node_rank}"])
    with pytest.raises(PlanError, match="differs from the master's"):
        render_k8s(plan)


def test_run_job_header(project: Path) -> None:
    plan = user_job(project)
    text = dump_k8s(plan)
    assert "@@NETORCH_RESULT@@" not in text
    header = [line for line in text.splitlines() if line.startswith("#")]
    assert f"#   kubectl logs -l {LABEL_RUN}={RUN},{JOB_INDEX_ANNOTATION}=0 --tail=-1" in header
    assert any("-- COMMAND" in line for line in header)
    assert any("hostPath" in line and "every node host must have" in line for line in header)
    assert f"#   {project / 'code'} -> /workspace (read-only)" in header
    assert any("PersistentVolumeClaims" in line for line in header)
    assert "#   scratch -> /scratch" in header
    assert list(yaml.safe_load_all(text)) == render_k8s(plan)
    bench = dump_k8s(make_plan())
    assert "| grep @@NETORCH_RESULT@@" in bench and "hostPath" not in bench
    assert "[network.link]" not in bench and "[network.management]" not in bench
    beside = dump_k8s(make_plan(network={"subnet": "10.9.0.0/24", "link": {"rate": "1gbit"},
                                         "management": {"subnet": "10.8.0.0/24"}}))
    assert "# [network.link] is not in this file: netorch shapes links with tc in each" in beside
    assert "# [network.management] is not in this file: a pod has one interface." in beside


def test_cli_render_k8s_user_job(project: Path) -> None:
    out = project / "k8s"
    result = CliRunner().invoke(app, [
        "render", "k8s", "-o", str(out), "--run-id", RUN, "--nodes", "2", "--flavor", "jobset",
        "--workdir", str(project / "code"), "-v", "scratch:/scratch", "--",
        "python", "train.py",
    ])
    assert result.exit_code == 0, result.output
    _, obj = yaml.safe_load_all((out / f"netorch-{RUN}.yaml").read_text())
    (template,) = pod_templates([obj])
    assert template["spec"]["containers"][0]["workingDir"] == "/workspace"
    assert template["spec"]["volumes"][-1] == {
        "name": "mount-1", "persistentVolumeClaim": {"claimName": "scratch"}}
    bad = CliRunner().invoke(app, ["render", "k8s", "-o", str(project / "bad"), "-v",
                                   "My_Data:/data", "--", "python", "train.py"])
    assert bad.exit_code == 2
    assert "My_Data" in bad.output and "Traceback" not in bad.output
    assert not (project / "bad").exists()


# --- offline schema validation (kubernetes-validate) -------------------------------------------


def validate(obj: dict[str, Any]) -> None:
    # strict: the schemas with additionalProperties=false, so a misspelt field fails too
    kubernetes_validate.validate(obj, K8S_VERSION, strict=True)


def as_pod(template: dict[str, Any], name: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, **template.get("metadata", {})}, "spec": template["spec"]}


PLANS: dict[str, dict[str, Any]] = {
    "default": {},
    "gpus": {"gpu": {"per_node": 8}, "docker": {"ipc_mode": "host", "shm_size": "16g"},
             "env": {"NCCL_DEBUG": "INFO"}, "cluster": {"nodes": 4}},
    "one-node": {"cluster": {"nodes": 1}},
}


@pytest.mark.parametrize("case", PLANS)
def test_schema_indexed_job(case: str) -> None:
    objects = render_k8s(make_plan(**PLANS[case]), namespace="default")
    for obj in objects:
        validate(obj)  # Service v1, Job batch/v1
        if obj["kind"] == "Job":
            validate(as_pod(obj["spec"]["template"], f"{JOB}-0"))


@pytest.mark.parametrize("case", PLANS)
def test_schema_pytorchjob_templates(case: str) -> None:
    _, obj = render_k8s(make_plan(**PLANS[case]), "pytorchjob")
    for role, spec in obj["spec"]["pytorchReplicaSpecs"].items():
        validate(as_pod(spec["template"], f"{JOB}-{role.lower()}-0"))


@pytest.mark.parametrize("case", PLANS)
def test_schema_jobset_template(case: str) -> None:
    _, obj = render_k8s(make_plan(**PLANS[case]), "jobset")
    template = obj["spec"]["replicatedJobs"][0]["template"]
    validate({"apiVersion": "batch/v1", "kind": "Job",
              "metadata": {"name": f"{JOB}-node-0", **template["metadata"]}, "spec": template["spec"]})


@pytest.mark.parametrize("flavor", FLAVORS)
def test_schema_run_job(project: Path, flavor: str) -> None:
    """A user's job with a bind mount, a named volume, read-only mounts and a workdir."""
    objects = render_k8s(user_job(project), flavor, namespace="default")  # type: ignore[arg-type]
    for obj in objects:
        if obj["kind"] in ("Service", "Job"):
            validate(obj)
    for i, template in enumerate(pod_templates(objects)):
        validate(as_pod(template, f"{JOB}-{i}"))
    for obj in objects:
        if obj["kind"] == "JobSet":
            template = obj["spec"]["replicatedJobs"][0]["template"]
            validate({"apiVersion": "batch/v1", "kind": "Job",
                      "metadata": {"name": f"{JOB}-node-0", **template["metadata"]},
                      "spec": template["spec"]})


def test_schema_validator_is_live() -> None:
    """The validator rejects what it should, so the passes above mean something."""
    _, service, job = render_k8s(make_plan())
    broken = yaml.safe_load(yaml.safe_dump(job))
    broken["spec"]["template"]["spec"]["containers"][0]["volumeMount"] = []  # misspelt field
    with pytest.raises(kubernetes_validate.ValidationError):
        validate(broken)
    wrong_type = yaml.safe_load(yaml.safe_dump(service))
    wrong_type["spec"]["ports"][0]["port"] = "c10d"
    with pytest.raises(kubernetes_validate.ValidationError):
        validate(wrong_type)


# --- the readiness step, the NetworkPolicy, size independent of the node count ----------------


def wait_env(template_spec: dict[str, Any]) -> dict[str, Any]:
    (wait,) = template_spec["initContainers"]
    assert wait["name"] == WAIT_CONTAINER
    assert wait["args"] == ["python", "-c", WAIT_SCRIPT]  # no "$" in it: nothing to escape
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in wait["env"]}


def test_a_master_wait_below_one_second_is_one_line_with_exit_2() -> None:
    from typer.testing import CliRunner

    from orchestrator.cli import app

    result = CliRunner().invoke(app, ["render", "k8s", "-o", "unused", "--master-wait", "0"])
    assert result.exit_code == 2, result.output
    assert result.stderr.splitlines() == [
        "error: --master-wait 0: not a timeout; give 1 s or more (default 600)"]


@pytest.mark.parametrize("flavor", ["indexed-job", "jobset"])
def test_readiness_step_before_the_workload_of_every_node(flavor: str) -> None:
    plan = make_plan(cluster={"nodes": 4, "master_port": 29611}, gpu={"per_node": 2})
    objects = render_k8s(plan, flavor, master_wait_s=90)  # type: ignore[arg-type]
    (template,) = pod_templates(objects)
    env = wait_env(template["spec"])
    assert env == {
        "NETORCH_WAIT_ADDR": master_addr(plan, flavor),  # type: ignore[arg-type]
        "NETORCH_WAIT_PORT": "29611",
        "NETORCH_WAIT_TIMEOUT_S": "90",
        # The same node rank the workload reads: the master waits for its name only.
        "NODE_RANK": {"fieldRef": {"fieldPath": f"metadata.annotations['{JOB_INDEX_ANNOTATION}']"}},
    }
    (wait,) = template["spec"]["initContainers"]
    assert wait["image"] == plan.runtime.image and "resources" not in wait  # no GPU held


def test_readiness_step_of_pytorchjob_roles() -> None:
    plan = make_plan(cluster={"nodes": 3})
    _, obj = render_k8s(plan, "pytorchjob")
    replicas = obj["spec"]["pytorchReplicaSpecs"]
    master, worker = (wait_env(replicas[r]["template"]["spec"]) for r in ("Master", "Worker"))
    assert master["NETORCH_WAIT_ADDR"] == worker["NETORCH_WAIT_ADDR"] == f"{JOB}-master-0"
    assert master["NODE_RANK"] == "0" and "NODE_RANK" not in worker
    assert master["NETORCH_WAIT_TIMEOUT_S"] == str(MASTER_WAIT_S)


def run_wait(addr: str, port: int, timeout_s: float, node_rank: str | None
             ) -> subprocess.CompletedProcess[str]:
    """The readiness step's program as the init container runs it."""
    env = {"PATH": os.environ["PATH"], "NETORCH_WAIT_ADDR": addr,
           "NETORCH_WAIT_PORT": str(port), "NETORCH_WAIT_TIMEOUT_S": str(timeout_s)}
    if node_rank is not None:
        env["NODE_RANK"] = node_rank
    return subprocess.run([sys.executable, "-c", WAIT_SCRIPT], env=env, capture_output=True,
                          text=True, timeout=60)


def test_wait_script_waits_for_the_port_then_goes_on() -> None:
    with socket.socket() as probe:  # a free port, which nothing listens on yet
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)

    def listen_later() -> None:
        time.sleep(2)
        listener.bind(("127.0.0.1", port))
        listener.listen()

    thread = threading.Thread(target=listen_later)
    thread.start()
    try:
        done = run_wait("127.0.0.1", port, 30, node_rank="1")
    finally:
        thread.join()
        listener.close()
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == f"netorch: waiting up to 30s for the master 127.0.0.1:{port}"
    waited = re.fullmatch(rf"netorch: the master 127.0.0.1:{port} is reachable after (\S+)s",
                          lines[1])
    assert waited is not None and float(waited.group(1)) >= 1  # it did wait for the listener


def test_wait_script_gives_up_naming_the_master_and_the_error() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # closed again: connections are refused
    refused = run_wait("127.0.0.1", port, 1.5, node_rank="2")
    assert refused.returncode == 1
    assert refused.stderr.strip() == (
        f"netorch: the master 127.0.0.1:{port} is not reachable after 1.5s "
        "(ConnectionRefusedError: [Errno 111] Connection refused); giving up")
    unknown = run_wait("nt-unresolvable.invalid", port, 1, node_rank=None)
    assert unknown.returncode == 1
    assert unknown.stderr.startswith(
        f"netorch: the master nt-unresolvable.invalid:{port} is not reachable after 1s (gaierror")


def test_wait_script_on_the_master_needs_its_name_only() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    done = run_wait("localhost", port, 5, node_rank="0")  # nothing listens: not asked
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1].startswith("netorch: the master localhost is reachable")
    assert run_wait("nt-unresolvable.invalid", port, 1, node_rank="0").returncode == 1


@pytest.mark.parametrize("flavor", FLAVORS)
def test_network_policy_admits_only_the_jobs_pods(flavor: str) -> None:
    plan = make_plan(cluster={"nodes": 3})
    assert plan.network.internal  # the default
    objects = render_k8s(plan, flavor, namespace="ml")  # type: ignore[arg-type]
    policy = objects[0]
    assert policy["kind"] == "NetworkPolicy" and policy["apiVersion"] == "networking.k8s.io/v1"
    assert policy["metadata"]["namespace"] == "ml"
    own = service_selector(plan, flavor)  # type: ignore[arg-type]
    spec = policy["spec"]
    assert spec["podSelector"] == {"matchLabels": own}
    assert spec["policyTypes"] == ["Ingress", "Egress"]
    assert spec["ingress"] == [{"from": [{"podSelector": {"matchLabels": own}}]}]
    assert spec["egress"][0] == {"to": [{"podSelector": {"matchLabels": own}}]}
    assert spec["egress"][1]["ports"] == [{"protocol": "UDP", "port": 53},
                                          {"protocol": "TCP", "port": 53}]
    # The selector picks every pod of this job (all templates carry its labels) and no other's.
    for template in pod_templates(objects[1:]):
        assert own.items() <= template["metadata"]["labels"].items()
    other = make_plan(run_id="20261128-120000-ffff", cluster={"nodes": 3})
    for template in pod_templates(render_k8s(other, flavor)):  # type: ignore[arg-type]
        assert not own.items() <= template["metadata"]["labels"].items()
    validate(policy)


def test_network_policy_admits_the_scraper_on_the_metrics_ports() -> None:
    plan = build_plan(load_settings(overrides={"cluster": {"nodes": 2, "procs_per_node": 4},
                                               "metrics": {"port_base": 9500}}),
                      RUN, "docker", "train")
    ports = plan.master.env_dict["NETORCH_METRICS_PORT_BASE"]
    assert ports == "9500"
    policy = render_k8s(dataclasses.replace(plan, nodes=tuple(
        dataclasses.replace(n, mounts=()) for n in plan.nodes)))[0]  # checkpoints: master only
    scrape = policy["spec"]["ingress"][1]
    assert scrape == {
        "from": [{"namespaceSelector": {},
                  "podSelector": {"matchLabels": {"app.kubernetes.io/name": "prometheus"}}}],
        "ports": [{"protocol": "TCP", "port": 9500, "endPort": 9503}],
    }
    validate(policy)


def test_no_network_policy_when_the_network_is_not_internal() -> None:
    plan = make_plan(network={"internal": False})
    assert [o["kind"] for o in render_k8s(plan)] == ["Service", "Job"]
    assert "NetworkPolicy" not in dump_k8s(plan)


@pytest.mark.parametrize("flavor", ["indexed-job", "jobset"])
def test_render_size_does_not_grow_with_the_node_count(flavor: str) -> None:
    small = dump_k8s(make_plan(cluster={"nodes": 2}), flavor)  # type: ignore[arg-type]
    big = dump_k8s(make_plan(cluster={"nodes": 2000}, network={"subnet": "10.0.0.0/20"}),
                   flavor)  # type: ignore[arg-type]
    # Only numbers change (completions, parallelism, NNODES, WORLD_SIZE, --nnodes): a few digits.
    assert len(small.splitlines()) == len(big.splitlines())
    assert 0 < len(big) - len(small) < 64


def test_cli_render_k8s_of_2000_nodes_validates(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, [
        "render", "k8s", "-o", str(tmp_path), "--run-id", RUN, "--nodes", "2000",
        "--subnet", "10.0.0.0/16", "--master-wait", "120"])
    assert result.exit_code == 0, result.output
    text = (tmp_path / f"netorch-{RUN}.yaml").read_text()
    assert "waits up to 120 s until the master's" in text  # the header says so
    objects = list(yaml.safe_load_all(text))
    assert [o["kind"] for o in objects] == ["NetworkPolicy", "Service", "Job"]
    for obj in objects:
        validate(obj)
    job = objects[2]
    assert job["spec"]["completions"] == 2000
    validate(as_pod(job["spec"]["template"], f"{JOB}-1999"))
    assert wait_env(job["spec"]["template"]["spec"])["NETORCH_WAIT_TIMEOUT_S"] == "120"
    bad = CliRunner().invoke(app, ["render", "k8s", "-o", str(tmp_path), "--master-wait", "0"])
    assert bad.exit_code == 2 and "--master-wait" in bad.output
