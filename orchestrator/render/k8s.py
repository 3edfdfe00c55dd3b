"""Render a :class:`~orchestrator.plan.ClusterPlan` as Kubernetes objects.

The objects mean what the plan means, on a cluster with the NVIDIA device plugin: the same image,
the same ``torchrun`` command and injected environment, the same GPU count per node, ``/dev/shm``
of ``runtime.shm_size``, the plan's labels, and fail-fast (one failed node fails the run).

Three flavors:

``indexed-job`` (default, plain Kubernetes >= 1.28)
    A ``batch/v1`` Job with ``completionMode: Indexed``, ``completions = parallelism = nnodes`` and
    ``backoffLimit: 0`` (a failed node fails the Job and Kubernetes stops the others, like
    netorch's fail-fast), plus a headless Service (``clusterIP: None``) selecting its pods. The
    pod template's ``subdomain`` names the Service, so the pod of index *i* is reachable as
    ``<job>-<i>.<service>``. ``MASTER_ADDR`` is the DNS name of index 0; ``NODE_RANK`` comes from
    the ``batch.kubernetes.io/job-completion-index`` annotation through the downward API, and
    the torchrun flags read both as ``$(NODE_RANK)`` / ``$(MASTER_ADDR)`` (the kubelet expands
    ``$(VAR)`` in ``args`` from the container's env).
``pytorchjob`` (Kubeflow training-operator, ``kubeflow.org/v1``)
    ``Master`` (1 replica) + ``Worker`` (``nnodes - 1``). The operator injects ``MASTER_ADDR``
    (``<job>-master-0``), ``MASTER_PORT`` (from the master's container port named
    ``pytorchjob-port``), ``WORLD_SIZE`` (pods) and ``RANK`` (0 for the master, *i+1* for
    worker *i*): the node rank. So the plan's ``MASTER_ADDR``, ``MASTER_PORT``, ``WORLD_SIZE`` and
    ``NODE_RANK`` are not injected (duplicate names would conflict), and torchrun gets
    ``--node-rank $(RANK) --master-addr $(MASTER_ADDR)``. ``--nnodes`` stays the plan's number: it
    equals the replica count by construction, whereas the operator's ``WORLD_SIZE`` changed
    meaning across operator versions (pods vs pods x ``nprocPerNode``).
``jobset`` (JobSet controller, ``jobset.x-k8s.io/v1alpha2``)
    One replicated Job (``node``, 1 replica) holding the same Indexed Job; JobSet creates the
    headless Service itself (``network.enableDNSHostnames``), so ``MASTER_ADDR`` is
    ``<jobset>-node-0-0.<jobset>``. ``failurePolicy.maxRestarts: 0`` keeps fail-fast.

Every pod template starts with the readiness step, an init container running
:data:`WAIT_SCRIPT` in the job's image: the master's DNS name must resolve and (on the other
nodes) its port accept before torchrun starts, with a timeout and one log line either way. With
``network.internal`` the objects are led by a NetworkPolicy admitting only the job's own pods
(plus cluster DNS, and Prometheus on the metrics ports when the ranks serve metrics). Nothing
rendered grows with the node count.

What does not carry over from the Docker plan: fixed IPs, the bridge network, its subnet and MTU
(the CNI decides; pods get ``eth0``, which the plan's ``=eth0`` socket settings expect); the per
node ``NETORCH_PLANNED_IP``; ``gpu.device_ids`` (the device plugin allocates by count: a
:class:`PlanError`); ``docker.memlock`` (no pod field; set it in the container runtime). ``init``
becomes ``shareProcessNamespace: true`` (the pause container is PID 1, so torchrun keeps the
default SIGTERM handling), ``ipc_mode = "host"`` becomes ``hostIPC``, ``stop_timeout_s`` becomes
``terminationGracePeriodSeconds``.

Mounts carry over when every node has the same ones (a user's job: ``--workdir``,
``--checkpoint-dir``, ``--mount``): a bind becomes a ``hostPath`` volume of type ``Directory``
(so every Kubernetes node must have that directory, e.g. on shared storage), a named volume a
``persistentVolumeClaim`` of that name, and ``read_only`` ``readOnly: true`` on the
volumeMount. Mounts only some nodes have (netorch's train job keeps checkpoints on the master)
fit no shared pod template and are refused. ``plan.workdir`` becomes ``workingDir``.

Escaping, precisely. A plan may hold any string (settings validate theirs, but a plan can be
built by code), and the objects must mean exactly that string:

* ``$``: the kubelet expands ``$(VAR)`` in a container's ``command``, ``args`` and ``env[].value``
  only, and reduces every ``$$`` there to ``$`` ("Double $$ are reduced to a single $, which
  allows for escaping the $(VAR_NAME) syntax", EnvVar API reference). So every plan string that
  reaches ``args`` or an env value is written with *every* ``$`` doubled, the exact inverse
  (doubling only ``$(`` would not be: a literal ``$$(X)`` would come out as ``$`` plus X's
  value), except netorch's own ``$(NODE_RANK)`` / ``$(RANK)`` / ``$(MASTER_ADDR)``. Env *names*,
  ``image``, ``workingDir``, ``mountPath``, ``hostPath.path``, names and labels are never
  expanded and are written as they are.
* YAML: PyYAML writes the body (quoting, escapes, ``---``/``#``/``: `` inside values); strings
  Go's yaml (kubectl) would read as a number or bool (``0o17``, ``1e3``, ``y``) are quoted too
  (:class:`~orchestrator.render.compose.RenderDumper`).
* The header comment: every line starts with ``#``; plan values in it go through
  :func:`~orchestrator.render.compose.comment_text` (control, format and line-separator
  characters become ``\\n``-style escapes) and values in the commands it shows are
  :func:`shlex.quote`-d. The file name keeps only ``[A-Za-z0-9._-]`` of the run id.
"""

from __future__ import annotations

import hashlib
import re
import shlex
from pathlib import Path
from typing import Any, Final, Literal, get_args

import yaml

from orchestrator.errors import PlanError
from orchestrator.plan import (
    LABEL_RANK,
    LABEL_ROLE,
    LABEL_RUN,
    ClusterPlan,
    MountSpec,
    NodeSpec,
)
# One definition of "safe in a header comment" and of the YAML dumper for every rendered file.
from orchestrator.render.text import RenderDumper, comment_block

Flavor = Literal["indexed-job", "pytorchjob", "jobset"]
FLAVORS: Final[tuple[str, ...]] = get_args(Flavor)
DEFAULT_FLAVOR: Final[Flavor] = "indexed-job"

LABEL_APP_NAME: Final = "app.kubernetes.io/name"
LABEL_APP_INSTANCE: Final = "app.kubernetes.io/instance"
LABEL_APP_PART_OF: Final = "app.kubernetes.io/part-of"
LABEL_APP_COMPONENT: Final = "app.kubernetes.io/component"
APP_NAME: Final = "netorch"
# Set by the Job controller on every pod of an Indexed Job (annotation since 1.21).
JOB_INDEX_ANNOTATION: Final = "batch.kubernetes.io/job-completion-index"
GPU_RESOURCES: Final[dict[str, str]] = {"nvidia": "nvidia.com/gpu", "amd": "amd.com/gpu"}
SHM_VOLUME: Final = "dshm"
CONTAINER_NAME: Final = "node"
PYTORCHJOB_CONTAINER: Final = "pytorch"  # the training-operator only configures this name
PYTORCHJOB_PORT_NAME: Final = "pytorchjob-port"  # the operator reads MASTER_PORT from it
C10D_PORT_NAME: Final = "c10d"
JOBSET_REPLICATED_JOB: Final = "node"
DNS_LABEL_MAX: Final = 63
DNS_SUBDOMAIN_MAX: Final = 253
# Pod volume names of the plan's mounts: mount-0, mount-1, ... (one per distinct source).
MOUNT_VOLUME_PREFIX: Final = "mount-"
# The readiness step: an init container that holds the workload until the master can be reached.
WAIT_CONTAINER: Final = "wait-master"
MASTER_WAIT_S: Final = 600
# What the NetworkPolicy admits besides the job's own pods: cluster DNS, and Prometheus (pods
# labelled app.kubernetes.io/name=prometheus in any namespace) on the metrics ports.
DNS_NAMESPACE: Final = "kube-system"
DNS_POD_LABELS: Final[dict[str, str]] = {"k8s-app": "kube-dns"}
SCRAPER_POD_LABELS: Final[dict[str, str]] = {"app.kubernetes.io/name": "prometheus"}

# The readiness step's program (``python -c``, in the job's own image, which has Python for
# torchrun). The master's DNS name must resolve (torchrun's agent on the master resolves its own
# name: pytorch/pytorch#73682) and, on every other node, its c10d port must accept a connection
# (kubeflow/pytorch-operator#333), else torchrun fails or burns its rendezvous timeout. Gives up
# after NETORCH_WAIT_TIMEOUT_S with one line naming the address and the last error; exit 1 fails
# the pod, and backoffLimit 0 the job. No "$" in it: the kubelet expands $(VAR) in args.
WAIT_SCRIPT: Final = """\
import os, socket, sys, time
host = os.environ["NETORCH_WAIT_ADDR"]
port = int(os.environ["NETORCH_WAIT_PORT"])
timeout = float(os.environ["NETORCH_WAIT_TIMEOUT_S"])
master = os.environ.get("NODE_RANK") == "0"
what = host if master else "%s:%d" % (host, port)
print("netorch: waiting up to %gs for the master %s" % (timeout, what), flush=True)
start = time.monotonic()
problem = "not tried"
while True:
    try:
        socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        if master:
            break
        socket.create_connection((host, port), timeout=2).close()
        break
    except OSError as e:
        problem = "%s: %s" % (type(e).__name__, e)
    if time.monotonic() - start >= timeout:
        print("netorch: the master %s is not reachable after %gs (%s); giving up" % (
            what, timeout, problem), file=sys.stderr, flush=True)
        sys.exit(1)
    time.sleep(1)
print("netorch: the master %s is reachable after %.1fs" % (what, time.monotonic() - start),
      flush=True)
"""

# Env the plan sets per node; everything else must be equal on every node to fit one pod template.
_PER_NODE_ENV: Final = frozenset({"NODE_RANK", "NETORCH_NODE_NAME", "NETORCH_PLANNED_IP"})
# Env the Kubeflow training-operator injects itself (FACTS: Launcher conventions).
_PYTORCHJOB_OWNED_ENV: Final = frozenset({"MASTER_ADDR", "MASTER_PORT", "WORLD_SIZE", "RANK"})
_DNS_LABEL_RE: Final = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_SHM_RE: Final = re.compile(r"^(\d+)([bkmg]?)$")
_SHM_SUFFIX: Final[dict[str, str]] = {"": "", "b": "", "k": "Ki", "m": "Mi", "g": "Gi"}


# --- names -------------------------------------------------------------------------------------


def is_dns_label(name: str) -> bool:
    """True when ``name`` is an RFC 1123 label (lowercase alphanumerics and '-', at most 63)."""
    return len(name) <= DNS_LABEL_MAX and bool(_DNS_LABEL_RE.match(name))


def is_dns_subdomain(name: str) -> bool:
    """True when ``name`` is an RFC 1123 subdomain (labels joined by '.', at most 253): what
    Kubernetes accepts as a PersistentVolumeClaim name."""
    return len(name) <= DNS_SUBDOMAIN_MAX and all(
        _DNS_LABEL_RE.match(label) for label in name.split("."))


def _reserve(plan: ClusterPlan, flavor: Flavor) -> int:
    """Characters the controllers append to the base name to form pod hostnames / Services."""
    last = str(plan.nnodes - 1)
    if flavor == "pytorchjob":
        return len("-worker-") + len(last)  # <job>-worker-<i>: the operator's pod and Service
    if flavor == "jobset":
        return len(f"-{JOBSET_REPLICATED_JOB}-0-") + len(last)  # <js>-node-0-<i>
    return len("-") + len(last)  # <job>-<i>: the Indexed Job's pod hostname


def k8s_name(plan: ClusterPlan, flavor: Flavor = DEFAULT_FLAVOR) -> str:
    """The name of the Job / PyTorchJob / JobSet (and headless Service) for ``plan``.

    ``<cluster.name>-<run_id>`` made an RFC 1035 label (lowercase; ``_`` and ``.`` become ``-``;
    starts with a letter, as Service names must) and short enough that every name a controller
    derives from it (``<job>-<index>``, ``<job>-worker-<i>``) stays within 63 characters. When it
    has to be shortened, a hash of the full name keeps two long names apart.
    """
    prefix = plan.master.name.removesuffix("-master")  # the plan's "<cluster.name>-<run_id>"
    base = re.sub(r"[^a-z0-9-]+", "-", prefix.lower())
    base = re.sub(r"-{2,}", "-", base).strip("-") or APP_NAME
    if not base[0].isalpha():
        base = f"nt-{base}"
    limit = DNS_LABEL_MAX - _reserve(plan, flavor)
    if len(base) > limit:
        digest = hashlib.sha256(prefix.encode()).hexdigest()[:6]
        base = f"{base[: limit - len(digest) - 1].rstrip('-')}-{digest}"
    return base


def master_addr(plan: ClusterPlan, flavor: Flavor = DEFAULT_FLAVOR) -> str:
    """The DNS name of the node-rank-0 pod, which replaces the plan's fixed master IP."""
    name = k8s_name(plan, flavor)
    if flavor == "pytorchjob":
        return f"{name}-master-0"
    if flavor == "jobset":
        return f"{name}-{JOBSET_REPLICATED_JOB}-0-0.{name}"
    return f"{name}-0.{name}"


# --- pieces ------------------------------------------------------------------------------------


def _esc(text: str) -> str:
    return text.replace("$", "$$")


def shm_quantity(shm_size: str) -> str:
    """Docker's ``shm_size`` (``1g``, ``512m``: binary units) as a Kubernetes quantity (``1Gi``)."""
    match = _SHM_RE.match(shm_size.strip().lower())
    if match is None:
        raise PlanError(
            f"runtime.shm_size {shm_size!r} is not a memory size; write e.g. 1g or 512m"
        )
    return match.group(1) + _SHM_SUFFIX[match.group(2)]


def _uniform(plan: ClusterPlan) -> None:
    """Refuse a plan whose nodes cannot share one pod template (beyond rank-specific values)."""
    # Mounts on every node become volumes of the shared pod template. Linear in the nodes: a
    # mount on every node is on the master, and a node's own mount is what is not on them all.
    common = set(plan.master.mounts)
    for node in plan.nodes:
        common &= set(node.mounts)
    for node in plan.nodes:
        for mount in node.mounts:
            if mount in common:
                continue
            what = (f"bind-mounts host directory {mount.source}" if mount.kind == "bind"
                    else f"mounts volume {mount.source}")
            raise PlanError(
                f"node {node.name} {what} at {mount.target} but not every node does; "
                "a cluster's nodes do not share this host's files, so the plan cannot be "
                "rendered for Kubernetes as is: render the bench workload, or mount a "
                "PersistentVolumeClaim there yourself"
            )
    first = plan.master
    for node in plan.nodes[1:]:
        if node.gpus != first.gpus:
            raise PlanError(
                f"node {node.name} reserves {node.gpus} but the master reserves {first.gpus}; "
                "Kubernetes gives every pod of a Job the same resources: use gpu.per_node"
            )
        if [k for k, _ in node.env] != [k for k, _ in first.env] or any(
            v != first.env_dict[k] for k, v in node.env if k not in _PER_NODE_ENV
        ):
            raise PlanError(
                f"node {node.name} has an environment that differs from the master's beyond "
                f"{', '.join(sorted(_PER_NODE_ENV))}; it cannot share one pod template"
            )
        if _command(node, "$(NODE_RANK)", "$(MASTER_ADDR)") != _command(
            first, "$(NODE_RANK)", "$(MASTER_ADDR)"
        ):
            raise PlanError(
                f"node {node.name} runs a command that differs from the master's beyond "
                "--node-rank; it cannot share one pod template"
            )


def _command(node: NodeSpec, node_rank: str, addr: str) -> list[str]:
    """The node's torchrun argv with ``--node-rank`` / ``--master-addr`` values replaced."""
    replace = {"--node-rank": node_rank, "--master-addr": addr}
    argv: list[str] = []
    pending: str | None = None
    for arg in node.command:
        if pending is not None:
            argv.append(pending)
            pending = None
            continue
        argv.append(_esc(arg))
        pending = replace.get(arg)
    for flag in replace:
        if flag not in node.command:
            raise PlanError(
                f"node {node.name}'s command has no {flag}; only torchrun plans can be rendered"
            )
    return argv


def _claim_name(mount: MountSpec) -> str:
    """The PersistentVolumeClaim a named volume becomes: the volume's own name, if it can be."""
    if not is_dns_subdomain(mount.source):
        hint = re.sub(r"[^a-z0-9.]+", "-", mount.source.lower())
        hint = re.sub(r"-*\.[-.]*", ".", hint).strip("-.")[:DNS_SUBDOMAIN_MAX].strip("-.")
        example = f", e.g. {hint!r}" if is_dns_subdomain(hint) else ""
        raise PlanError(
            f"named volume {mount.source!r} (mounted at {mount.target}) cannot name a Kubernetes "
            "PersistentVolumeClaim; use a volume named with lowercase letters, digits, '-' and "
            f"'.', starting and ending with a letter or digit{example}"
        )
    return mount.source


def _mount_volumes(plan: ClusterPlan) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The pod's volumes and the container's volumeMounts for the plan's mounts (the master's:
    :func:`_uniform` has checked every node has the same). One volume per distinct source, so
    two mounts of one directory or claim share it."""
    names: dict[tuple[str, str], str] = {}
    volumes: list[dict[str, Any]] = []
    mounts: list[dict[str, Any]] = []
    for mount in plan.master.mounts:
        key = (mount.kind, mount.source)
        name = names.get(key)
        if name is None:
            name = names[key] = f"{MOUNT_VOLUME_PREFIX}{len(names)}"
            if mount.kind == "volume":
                volumes.append({"name": name,
                                "persistentVolumeClaim": {"claimName": _claim_name(mount)}})
            else:
                # Directory: a path missing on the node fails the pod instead of mounting an
                # empty directory the job would silently read from or write into.
                volumes.append({"name": name,
                                "hostPath": {"path": mount.source, "type": "Directory"}})
        item: dict[str, Any] = {"name": name, "mountPath": mount.target}
        if mount.read_only:
            item["readOnly"] = True
        mounts.append(item)
    return volumes, mounts


def _gpu_limits(plan: ClusterPlan) -> dict[str, int]:
    gpus = plan.master.gpus
    if gpus is None:
        return {}
    if gpus.device_ids:
        raise PlanError(
            f"gpu.device_ids {list(gpus.device_ids)} cannot be rendered for Kubernetes: the "
            "device plugin allocates GPUs by count, not by id; use gpu.per_node = "
            f"{len(gpus.device_ids)} instead"
        )
    resource = GPU_RESOURCES.get(gpus.driver)
    if resource is None:
        raise PlanError(
            f"gpu.driver {gpus.driver!r} has no known Kubernetes device-plugin resource; use one "
            f"of {', '.join(sorted(GPU_RESOURCES))}"
        )
    return {resource: int(gpus.count or 0)}


def _field_env(name: str, field_path: str) -> dict[str, Any]:
    return {"name": name, "valueFrom": {"fieldRef": {"fieldPath": field_path}}}


def _env(plan: ClusterPlan, flavor: Flavor) -> list[dict[str, Any]]:
    """The plan's env in order, with per-node values taken from the pod (downward API)."""
    addr = master_addr(plan, flavor)
    out: list[dict[str, Any]] = []
    for key, value in plan.master.env:
        if flavor == "pytorchjob" and (key in _PYTORCHJOB_OWNED_ENV or key == "NODE_RANK"):
            continue  # the operator injects these (NODE_RANK: torchrun's GROUP_RANK remains)
        if key == "NETORCH_PLANNED_IP":
            continue  # pods get their IPs from the CNI: there is no planned address
        if key == "MASTER_ADDR":
            out.append({"name": key, "value": addr})
        elif key == "NODE_RANK":
            out.append(_field_env(key, f"metadata.annotations['{JOB_INDEX_ANNOTATION}']"))
        elif key == "NETORCH_NODE_NAME":
            out.append(_field_env(key, "metadata.name"))
        else:
            out.append({"name": key, "value": _esc(value)})  # names are never expanded
    gpus = plan.master.gpus
    names = {item["name"] for item in out}
    if gpus is not None and "NVIDIA_DRIVER_CAPABILITIES" not in names:
        # Docker's ["gpu", ...] capabilities: "gpu" selects the device, the rest are what the
        # NVIDIA container toolkit mounts (utility = NVML); the same variable says so in a pod.
        caps = [c for c in gpus.capabilities if c != "gpu"]
        if caps and gpus.driver == "nvidia":
            out.append({"name": "NVIDIA_DRIVER_CAPABILITIES", "value": _esc(",".join(caps))})
    return out


def _labels(plan: ClusterPlan, name: str) -> dict[str, str]:
    """The plan's run labels plus the recommended ``app.kubernetes.io/*`` ones."""
    labels = dict(plan.labels)
    labels[LABEL_APP_NAME] = APP_NAME
    labels[LABEL_APP_INSTANCE] = name
    labels[LABEL_APP_PART_OF] = APP_NAME
    return labels


def _metadata(name: str, labels: dict[str, str], namespace: str | None) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name}
    if namespace is not None:
        meta["namespace"] = namespace
    meta["labels"] = labels
    return meta


def _wait_container(plan: ClusterPlan, flavor: Flavor, role: Literal["any", "master", "worker"],
                    wait_s: int) -> dict[str, Any]:
    """The readiness step: :data:`WAIT_SCRIPT` in the job's image. ``role`` ``any`` (one template
    for every node) reads the node rank from the pod like the workload does."""
    env: list[dict[str, Any]] = [
        {"name": "NETORCH_WAIT_ADDR", "value": master_addr(plan, flavor)},
        {"name": "NETORCH_WAIT_PORT", "value": str(plan.master_port)},
        {"name": "NETORCH_WAIT_TIMEOUT_S", "value": str(wait_s)},
    ]
    if role == "any":
        env.append(_field_env("NODE_RANK", f"metadata.annotations['{JOB_INDEX_ANNOTATION}']"))
    elif role == "master":
        env.append({"name": "NODE_RANK", "value": "0"})
    return {"name": WAIT_CONTAINER, "image": plan.runtime.image,
            "args": ["python", "-c", _esc(WAIT_SCRIPT)], "env": env}


def _pod_spec(
    plan: ClusterPlan, flavor: Flavor, container: str, port_name: str | None,
    node_rank: str, addr: str, role: Literal["any", "master", "worker"] = "any",
    wait_s: int = MASTER_WAIT_S,
) -> dict[str, Any]:
    rt = plan.runtime
    ctr: dict[str, Any] = {
        "name": container,
        "image": rt.image,
        # args, not command: Docker's `command` replaces CMD and keeps the ENTRYPOINT; so do args.
        "args": _command(plan.master, node_rank, addr),
        "env": _env(plan, flavor),
    }
    if plan.workdir is not None:
        ctr["workingDir"] = plan.workdir
    if port_name is not None:
        ctr["ports"] = [{"name": port_name, "containerPort": plan.master_port, "protocol": "TCP"}]
    limits = _gpu_limits(plan)
    if limits:
        ctr["resources"] = {"limits": limits}
    volumes, volume_mounts = _mount_volumes(plan)
    ctr["volumeMounts"] = [{"name": SHM_VOLUME, "mountPath": "/dev/shm"}, *volume_mounts]
    spec: dict[str, Any] = {"restartPolicy": "Never"}
    if rt.init:
        spec["shareProcessNamespace"] = True
    if rt.ipc_mode == "host":
        spec["hostIPC"] = True
    elif rt.ipc_mode not in (None, "private", "shareable"):
        raise PlanError(
            f"docker.ipc_mode {rt.ipc_mode!r} has no Kubernetes equivalent; use host or leave it unset"
        )
    spec["terminationGracePeriodSeconds"] = rt.stop_timeout_s
    spec["initContainers"] = [_wait_container(plan, flavor, role, wait_s)]
    spec["containers"] = [ctr]
    spec["volumes"] = [
        {"name": SHM_VOLUME, "emptyDir": {"medium": "Memory", "sizeLimit": shm_quantity(rt.shm_size)}},
        *volumes,
    ]
    return spec


def _indexed_job_spec(plan: ClusterPlan, flavor: Flavor, pod_labels: dict[str, str],
                      subdomain: str | None, wait_s: int) -> dict[str, Any]:
    pod = _pod_spec(plan, flavor, CONTAINER_NAME, C10D_PORT_NAME, "$(NODE_RANK)", "$(MASTER_ADDR)",
                    wait_s=wait_s)
    if subdomain is not None:
        pod = {"subdomain": subdomain, **pod}
    return {
        "completionMode": "Indexed",
        "completions": plan.nnodes,
        "parallelism": plan.nnodes,
        "backoffLimit": 0,  # one failed node fails the run (netorch's fail-fast)
        "template": {"metadata": {"labels": dict(pod_labels)}, "spec": pod},
    }


def service_selector(plan: ClusterPlan, flavor: Flavor = DEFAULT_FLAVOR) -> dict[str, str]:
    """The labels the headless Service selects on: this run's pods and no others."""
    return {LABEL_RUN: plan.run_id, LABEL_APP_INSTANCE: k8s_name(plan, flavor)}


def metrics_ports(plan: ClusterPlan) -> tuple[int, int] | None:
    """The first and last port the ranks of a node serve /metrics on; None: metrics are off."""
    base = plan.master.env_dict.get("NETORCH_METRICS_PORT_BASE")
    if base is None:
        return None
    return int(base), int(base) + plan.nproc_per_node - 1


def network_policy(plan: ClusterPlan, flavor: Flavor,
                   namespace: str | None) -> dict[str, Any] | None:
    """``network.internal``: a NetworkPolicy that lets the job's pods talk to each other and to
    the cluster DNS only, and admits Prometheus on the metrics ports when metrics are on.
    None when the plan's network is not internal."""
    if not plan.network.internal:
        return None
    name = k8s_name(plan, flavor)
    own = {"podSelector": {"matchLabels": service_selector(plan, flavor)}}
    ingress: list[dict[str, Any]] = [{"from": [own]}]
    ports = metrics_ports(plan)
    if ports is not None:
        port: dict[str, Any] = {"protocol": "TCP", "port": ports[0]}
        if ports[1] > ports[0]:
            port["endPort"] = ports[1]
        ingress.append({
            "from": [{"namespaceSelector": {},
                      "podSelector": {"matchLabels": dict(SCRAPER_POD_LABELS)}}],
            "ports": [port],
        })
    dns = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": DNS_NAMESPACE}},
           "podSelector": {"matchLabels": dict(DNS_POD_LABELS)}}
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": _metadata(name, _labels(plan, name), namespace),
        "spec": {
            "podSelector": {"matchLabels": service_selector(plan, flavor)},
            "policyTypes": ["Ingress", "Egress"],
            "ingress": ingress,
            "egress": [
                {"to": [own]},
                {"to": [dns], "ports": [{"protocol": "UDP", "port": 53},
                                        {"protocol": "TCP", "port": 53}]},
            ],
        },
    }


def _indexed_job(plan: ClusterPlan, namespace: str | None, wait_s: int) -> list[dict[str, Any]]:
    name = k8s_name(plan, "indexed-job")
    labels = _labels(plan, name)
    service: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(name, dict(labels), namespace),
        "spec": {
            "clusterIP": "None",
            # DNS records before readiness: workers resolve the master while it starts.
            "publishNotReadyAddresses": True,
            "selector": service_selector(plan, "indexed-job"),
            "ports": [{"name": C10D_PORT_NAME, "port": plan.master_port,
                       "targetPort": plan.master_port, "protocol": "TCP"}],
        },
    }
    job: dict[str, Any] = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": _metadata(name, labels, namespace),
        "spec": _indexed_job_spec(plan, "indexed-job", labels, subdomain=name, wait_s=wait_s),
    }
    return [service, job]


def _pytorchjob(plan: ClusterPlan, namespace: str | None, wait_s: int) -> list[dict[str, Any]]:
    name = k8s_name(plan, "pytorchjob")
    labels = _labels(plan, name)

    def replica(role: Literal["master", "worker"], count: int, port: str | None,
                rank_label: bool) -> dict[str, Any]:
        pod_labels = {**labels, LABEL_ROLE: role, LABEL_APP_COMPONENT: role}
        if rank_label:
            pod_labels[LABEL_RANK] = "0"
        spec = _pod_spec(plan, "pytorchjob", PYTORCHJOB_CONTAINER, port, "$(RANK)", "$(MASTER_ADDR)",
                         role=role, wait_s=wait_s)
        return {
            "replicas": count,
            "restartPolicy": "Never",  # the operator retries nothing: a failed node fails the job
            "template": {"metadata": {"labels": pod_labels}, "spec": spec},
        }

    replicas: dict[str, Any] = {"Master": replica("master", 1, PYTORCHJOB_PORT_NAME, True)}
    if plan.nnodes > 1:
        replicas["Worker"] = replica("worker", plan.nnodes - 1, None, False)
    return [{
        "apiVersion": "kubeflow.org/v1",
        "kind": "PyTorchJob",
        "metadata": _metadata(name, labels, namespace),
        "spec": {
            "runPolicy": {"backoffLimit": 0, "cleanPodPolicy": "Running"},
            "pytorchReplicaSpecs": replicas,
        },
    }]


def _jobset(plan: ClusterPlan, namespace: str | None, wait_s: int) -> list[dict[str, Any]]:
    name = k8s_name(plan, "jobset")
    labels = _labels(plan, name)
    return [{
        "apiVersion": "jobset.x-k8s.io/v1alpha2",
        "kind": "JobSet",
        "metadata": _metadata(name, labels, namespace),
        "spec": {
            # JobSet creates the headless Service <name> (publishing not-ready pods by default)
            # and sets every pod's subdomain to it.
            "network": {"enableDNSHostnames": True},
            "failurePolicy": {"maxRestarts": 0},
            "replicatedJobs": [{
                "name": JOBSET_REPLICATED_JOB,
                "replicas": 1,
                "template": {
                    "metadata": {"labels": dict(labels)},
                    "spec": _indexed_job_spec(plan, "jobset", labels, subdomain=None,
                                              wait_s=wait_s),
                },
            }],
        },
    }]


# --- public ------------------------------------------------------------------------------------


def render_k8s(
    plan: ClusterPlan, flavor: Flavor = DEFAULT_FLAVOR, namespace: str | None = None,
    master_wait_s: int = MASTER_WAIT_S,
) -> list[dict[str, Any]]:
    """Return the Kubernetes objects equal in meaning to ``plan``, in apply order.

    Pure: no I/O, same inputs -> equal lists. ``indexed-job`` gives ``[Service, Job]``,
    ``pytorchjob`` ``[PyTorchJob]``, ``jobset`` ``[JobSet]``, each led by a ``NetworkPolicy``
    when the plan's network is internal (so no pod runs unprotected). Every pod starts with the
    readiness step (:data:`WAIT_SCRIPT`), which waits up to ``master_wait_s`` for the master.
    The objects' size does not depend on the node count. ``namespace`` (an RFC 1123 label) is
    written into every object's metadata; without it ``kubectl``'s current namespace applies.
    Raises :class:`PlanError` for what Kubernetes cannot express (``gpu.device_ids``, an unknown
    GPU driver or ipc mode, mounts that differ between nodes, a named volume that cannot name a
    PersistentVolumeClaim) and for an unknown flavor or invalid namespace.
    """
    if flavor not in FLAVORS:
        raise PlanError(f"flavor {flavor!r} is unknown; use one of {', '.join(FLAVORS)}")
    if namespace is not None and not is_dns_label(namespace):
        raise PlanError(
            f"namespace {namespace!r} is not a Kubernetes namespace name; use at most 63 "
            "lowercase letters, digits and '-', starting and ending with a letter or digit"
        )
    if master_wait_s < 1:
        raise PlanError(f"--master-wait {master_wait_s}: not a timeout; give 1 s or more "
                        f"(default {MASTER_WAIT_S})")
    _gpu_limits(plan)  # device_ids / unknown driver: the clearest error first
    _uniform(plan)
    policy = network_policy(plan, flavor, namespace)
    if flavor == "pytorchjob":
        objects = _pytorchjob(plan, namespace, master_wait_s)
    elif flavor == "jobset":
        objects = _jobset(plan, namespace, master_wait_s)
    else:
        objects = _indexed_job(plan, namespace, master_wait_s)
    return objects if policy is None else [policy, *objects]


def k8s_file_name(plan: ClusterPlan) -> str:
    """``netorch-<run_id>.yaml``: a plain file name whatever the run id holds (any character
    but ``[A-Za-z0-9._-]`` becomes ``-``, so no ``/`` can lead out of the output directory)."""
    return "netorch-" + re.sub(r"[^A-Za-z0-9._-]", "-", plan.run_id) + ".yaml"


def k8s_header(plan: ClusterPlan, flavor: Flavor = DEFAULT_FLAVOR,
               namespace: str | None = None, master_wait_s: int = MASTER_WAIT_S) -> str:
    """The comment block written above the YAML: origin, how to apply, watch and remove.

    Every line starts with ``#`` whatever the plan holds; values in the commands it shows are
    shell-quoted, so copying a command runs that command only.
    """
    q = shlex.quote
    file_name = q(k8s_file_name(plan))
    name = k8s_name(plan, flavor)
    ns = f" -n {q(namespace)}" if namespace else ""
    kind = {"indexed-job": "job", "pytorchjob": "pytorchjob", "jobset": "jobset"}[flavor]
    needs = {
        "indexed-job": "Kubernetes 1.28+ (Indexed Job pod labels) and the NVIDIA device plugin "
                       "for GPUs.",
        "pytorchjob": "the Kubeflow training-operator (PyTorchJob v1) and the NVIDIA device "
                      "plugin for GPUs.",
        "jobset": "the JobSet controller (v1alpha2) and the NVIDIA device plugin for GPUs.",
    }[flavor]
    master_sel = {
        "indexed-job": f"{JOB_INDEX_ANNOTATION}=0",
        "pytorchjob": f"{LABEL_ROLE}=master",
        "jobset": f"{JOB_INDEX_ANNOTATION}=0",
    }[flavor]
    flags = f" --namespace {q(namespace)}" if namespace else ""
    rest = "[config flags]" if plan.emits_result else "[config and run flags] -- COMMAND"
    logs = f"  kubectl logs{ns} -l {q(f'{LABEL_RUN}={plan.run_id},{master_sel}')} --tail=-1"
    if plan.emits_result:
        read = "read the result (rank 0 prints one @@NETORCH_RESULT@@ line)"
        logs += " | grep @@NETORCH_RESULT@@"
    else:
        read = "read the master's output (a failed pod fails the run)"
    lines = [
        f"Generated by netorch from run id {plan.run_id}: do not edit, regenerate instead with",
        f"  netorch render k8s --run-id {q(plan.run_id)} --flavor {flavor}{flags} -o DIR {rest}",
        f"{plan.nnodes} nodes x {plan.nproc_per_node} ranks (world size {plan.world_size}), "
        f"dist backend {plan.dist_backend}, image {plan.runtime.image}.",
        f"Needs {needs}",
        "",
        f"Apply, watch, {read}, remove:",
        f"  kubectl apply{ns} -f {file_name}",
        f"  kubectl get{ns} {kind}/{name} -w",
        logs,
        f"  kubectl delete{ns} -f {file_name}",
        "",
        "Pods have no fixed IPs: the plan's network (subnet, gateway, MTU, node IPs) does not apply,",
        "the CNI decides. MASTER_ADDR is the DNS name of node rank 0:",
        f"  {master_addr(plan, flavor)}",
        f"NCCL and gloo use the pod interface {plan.network.interface}. /dev/shm is a memory "
        f"emptyDir of {shm_quantity(plan.runtime.shm_size)}",
        "(it counts against the pod's memory limit).",
    ]
    lines.append(f"Every pod first runs the init container {WAIT_CONTAINER}: it waits up to "
                 f"{master_wait_s} s until the master's")
    lines.append("name resolves and (on the other nodes) its port accepts, and logs one line "
                 "either way.")
    if plan.network.internal:
        lines.append("network.internal: a NetworkPolicy admits only this job's pods (and "
                     "cluster DNS on port 53)")
        ports = metrics_ports(plan)
        if ports is not None:
            lines.append(f"plus pods labelled app.kubernetes.io/name=prometheus on the metrics "
                         f"ports {ports[0]}-{ports[1]};")
        lines.append("it takes effect where the CNI enforces NetworkPolicies (Calico, Cilium, ...).")
    binds = [m for m in plan.master.mounts if m.kind == "bind"]
    claims = [m for m in plan.master.mounts if m.kind == "volume"]
    if binds:
        lines.append("Bind mounts are hostPath volumes (type Directory): every node host must "
                     "have these directories,")
        lines.append("e.g. on shared storage mounted at the same path:")
        lines.extend(f"  {m.source} -> {m.target}{' (read-only)' if m.read_only else ''}"
                     for m in binds)
    if claims:
        lines.append("Named volumes are PersistentVolumeClaims of that name, which must exist in "
                     "the namespace")
        lines.append("(ReadWriteMany, or ReadOnlyMany when read-only: every pod mounts them):")
        lines.extend(f"  {m.source} -> {m.target}{' (read-only)' if m.read_only else ''}"
                     for m in claims)
    if plan.runtime.memlock is not None:
        lines.append(f"docker.memlock={plan.runtime.memlock} has no pod field: set it in the "
                     "container runtime's default ulimits.")
    if plan.network.shaped:
        lines += ["[network.link] is not in this file: netorch shapes links with tc in each",
                  "container after it starts (docker backend only)."]
    if plan.management is not None:
        lines.append("[network.management] is not in this file: a pod has one interface.")
    return comment_block(lines)


def dump_k8s(plan: ClusterPlan, flavor: Flavor = DEFAULT_FLAVOR,
             namespace: str | None = None, master_wait_s: int = MASTER_WAIT_S) -> str:
    """The full multi-document YAML text for ``plan``: header comment, then one doc per object."""
    objects = render_k8s(plan, flavor, namespace, master_wait_s)
    body = yaml.dump_all(objects, Dumper=RenderDumper, sort_keys=False,
                         default_flow_style=False, width=4096, explicit_start=True)
    return k8s_header(plan, flavor, namespace, master_wait_s) + body


def write_k8s(plan: ClusterPlan, out_dir: Path, flavor: Flavor = DEFAULT_FLAVOR,
              namespace: str | None = None, master_wait_s: int = MASTER_WAIT_S) -> list[Path]:
    """Write ``out_dir/netorch-<run_id>.yaml`` (creating ``out_dir``); return the written paths."""
    text = dump_k8s(plan, flavor, namespace, master_wait_s)  # render first: a PlanError writes nothing
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / k8s_file_name(plan)
    path.write_text(text, encoding="utf-8")
    return [path]


__all__ = [
    "APP_NAME",
    "MASTER_WAIT_S",
    "WAIT_CONTAINER",
    "WAIT_SCRIPT",
    "DEFAULT_FLAVOR",
    "FLAVORS",
    "Flavor",
    "GPU_RESOURCES",
    "JOB_INDEX_ANNOTATION",
    "LABEL_APP_NAME",
    "LABEL_APP_PART_OF",
    "dump_k8s",
    "is_dns_label",
    "is_dns_subdomain",
    "k8s_file_name",
    "k8s_header",
    "k8s_name",
    "master_addr",
    "metrics_ports",
    "network_policy",
    "render_k8s",
    "service_selector",
    "shm_quantity",
    "write_k8s",
]
