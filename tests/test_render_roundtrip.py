"""Renderers against hostile plans: whatever string a plan holds, the rendered file is a header
of comment lines and exactly the expected YAML documents, and every value the engine reads back
(after the engine's own escaping: compose's ``$$`` and ``$VAR`` interpolation, the kubelet's
``$$`` and ``$(VAR)`` expansion) is the plan's value.

Plans are built by :func:`build_plan` and then made hostile with :func:`dataclasses.replace`, so
no settings validation stands between the strings and the renderers. The CLI tests send hostile
values through ``--set`` and ``NETORCH_*``: the settings may refuse them (exit 2, one line
naming the field) or the render must parse back to the plan's documents.
"""

from __future__ import annotations

import dataclasses
import functools
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from orchestrator.errors import PlanError
from orchestrator.plan import ClusterPlan, GpuSpec, MountSpec, build_plan
from orchestrator.render.compose import (
    COMPOSE_FILE_NAME,
    comment_text,
    compose_header,
    dump_compose,
    render_compose,
    write_compose,
)
from orchestrator.render.k8s import (
    APP_NAME,
    FLAVORS,
    JOB_INDEX_ANNOTATION,
    LABEL_APP_INSTANCE,
    LABEL_APP_NAME,
    LABEL_APP_PART_OF,
    WAIT_SCRIPT,
    Flavor,
    dump_k8s,
    is_dns_label,
    k8s_file_name,
    k8s_header,
    k8s_name,
    master_addr,
    render_k8s,
)
from orchestrator.settings import load_settings
from orchestrator.settings_overrides import overrides_from_pairs

pytestmark = pytest.mark.usefixtures("isolated")

RUN = "20261128-120000-beef"
# Hypothesis examples per property; together the two properties stay well under 30 s.
COMPOSE_EXAMPLES = 200
K8S_EXAMPLES = 200

# --- the engines' escaping, modelled -----------------------------------------------------------

# compose 1.29 (compose/config/interpolation.py TemplateWithDefaults; compose-go alike): $$ is a
# literal $, $NAME / ${...} a variable, any other $ an "Invalid interpolation format" error.
_COMPOSE_VAR = re.compile(
    r"\$(?:(?P<escaped>\$)|(?P<named>[_a-z][_a-z0-9]*)|\{(?P<braced>[^}]*)\}|(?P<invalid>))",
    re.IGNORECASE,
)


def compose_interpolate(text: str) -> str:
    """What compose makes of a string value: variables become ``<VAR>`` (every variable set)."""

    def one(match: re.Match[str]) -> str:
        if match.group("escaped") is not None:
            return "$"
        if match.group("invalid") is not None:
            raise AssertionError(f"compose rejects {text!r}: invalid interpolation format")
        return "<VAR>"

    return _COMPOSE_VAR.sub(one, text)


def compose_reads(value: Any) -> Any:
    """The compose document as compose sees it: every string value interpolated, keys not."""
    if isinstance(value, str):
        return compose_interpolate(value)
    if isinstance(value, dict):
        return {k: compose_reads(v) for k, v in value.items()}
    if isinstance(value, list):
        return [compose_reads(v) for v in value]
    return value


def kubelet_expand(text: str) -> str:
    """The kubelet's expansion of ``args`` and env values (third_party/forked/golang/expansion):
    ``$$`` is ``$``, ``$(NAME)`` becomes ``<NAME>`` (every variable defined), anything else
    stays."""
    out: list[str] = []
    i = 0
    while i < len(text):
        if text[i] == "$" and i + 1 < len(text):
            nxt = text[i + 1]
            if nxt == "$":
                out.append("$")
                i += 2
                continue
            if nxt == "(":
                close = text.find(")", i + 2)
                if close != -1:
                    out.append(f"<{text[i + 2:close]}>")
                    i = close + 1
                    continue
            out.append("$" + nxt)
            i += 2
            continue
        out.append(text[i])
        i += 1
    return "".join(out)


def test_models_are_live() -> None:
    """The models above are what make the properties able to fail."""
    assert compose_interpolate("a$$b") == "a$b"
    assert compose_interpolate("$HOME/${X:-y}") == "<VAR>/<VAR>"
    with pytest.raises(AssertionError, match="invalid interpolation"):
        compose_interpolate("5$")
    assert kubelet_expand("$(A)$$(B)$$$(C)$x$") == "<A>$(B)$<C>$x$"


# --- hostile strings ---------------------------------------------------------------------------

PIECES = [
    "\n", "\r\n", "\r", "\x85", "\u2028", "\u2029", "\x0b", "\x0c", "\x1c", "\x00", "\x1b[31m",
    "\t", "\ufeff", "\u202e", "\ufffe", "\ue000",
    "$", "$$", "$(X)", "$$(X)", "$$$(X)", "${HOME}", "$HOME", "${X:-y}", "$(", "$)",
    "#", " # ", "'", '"', "\\", "\\n", "---", "...", "--- !!python/object:os.system", ": ",
    "- ", "? ", "|", ">", "&a", "*a", "!", "%YAML 1.1", "@", "`", "{", "}", "[", "]", ",",
    "0o17", "1e3", "y", "no", "null", "~", "=", "<<", "", " ", "é", "日本", "\U0001F600",
    "\napiVersion: v1\nkind: Pod\nspec:\n  containers:\n  - securityContext: {privileged: true}\n",
    "\n---\n", "\n# ", "\n...\n",
]
_TEXT = st.text(st.characters(exclude_categories=["Cs"]), max_size=12)  # no lone surrogates
_PIECE = st.sampled_from(PIECES)
hostile = st.one_of(st.lists(st.one_of(_PIECE, _TEXT), min_size=1, max_size=6).map("".join),
                    _TEXT)
# Very long (up to ~20 kB): for the fields most likely to carry it; everywhere would make every
# document megabytes and the property slow without finding more.
long_hostile = hostile | st.builds(lambda piece, n: ("x" + piece) * n, _PIECE,
                                   st.integers(100, 300))


def _keys(exclude: frozenset[str] = frozenset()) -> st.SearchStrategy[list[str]]:
    return st.lists(hostile.filter(lambda k: k not in exclude), max_size=4, unique=True)


@functools.cache
def _base_plan() -> ClusterPlan:
    return build_plan(load_settings(overrides={"cluster": {"nodes": 3}, "gpu": {"per_node": 1}}),
                      RUN, "docker")


def _flag_value(command: tuple[str, ...], flag: str, value: str) -> tuple[str, ...]:
    i = command.index(flag)
    return (*command[: i + 1], value, *command[i + 2:])


@st.composite
def hostile_plans(draw: st.DrawFn, for_k8s: bool) -> ClusterPlan:
    """A plan whose every string field the renderers read is hostile. ``for_k8s``: only what
    Kubernetes can express at all (one pod template: equal env, command tail, mounts and GPUs
    on every node; a GPU driver, ipc mode and shm size it knows; claim names it accepts)."""
    base = _base_plan()
    n = base.nnodes
    network = dataclasses.replace(
        base.network, name=draw(long_hostile), subnet=draw(hostile), gateway=draw(hostile),
        ip_range=draw(hostile), bridge_name=draw(hostile), interface=draw(hostile),
        labels=tuple((k, draw(hostile)) for k in draw(_keys())),
    )
    runtime = dataclasses.replace(
        base.runtime, image=draw(long_hostile),
        shm_size="2g" if for_k8s else draw(hostile),
        ipc_mode=draw(st.sampled_from([None, "host"])) if for_k8s else draw(st.none() | hostile),
        memlock=draw(st.none() | st.integers(-1, 1 << 40)),
    )
    taken = frozenset(k for k, _ in base.master.env) | {"NVIDIA_DRIVER_CAPABILITIES"}
    user_env = tuple((k, draw(long_hostile)) for k in draw(_keys(taken)))
    # Base env values made hostile too, except the per-node ones k8s takes from the pod.
    env_values = {k: draw(hostile) for k in ("NCCL_SOCKET_IFNAME", "NETORCH_RUN_ID",
                                             "MASTER_PORT", "OMP_NUM_THREADS")}
    flags = frozenset({"--node-rank", "--master-addr"})
    tail = tuple(draw(st.lists(long_hostile.filter(lambda a: a not in flags), max_size=5)))
    addr = draw(hostile)
    mounts = tuple(
        MountSpec("/" + draw(hostile), draw(long_hostile), draw(st.booleans()), "bind")
        for _ in range(draw(st.integers(0, 2)))
    ) + ((MountSpec("shared-data", draw(hostile), draw(st.booleans()), "volume"),)
         if draw(st.booleans()) else ())
    caps = tuple(draw(st.lists(hostile, min_size=1, max_size=3)))
    gpus = GpuSpec(1, (), "nvidia", ("gpu", *caps))
    hostnames = draw(st.lists(hostile, min_size=n, max_size=n, unique=True))
    nodes = []
    for node, hostname in zip(base.nodes, hostnames):
        command = _flag_value(node.command, "--master-addr", addr)
        command = _flag_value(command, "--node-rank", draw(hostile))
        env = tuple((k, env_values.get(k, v)) for k, v in node.env) + user_env
        node_mounts = mounts
        node_gpus = gpus
        if not for_k8s:
            node_mounts += tuple(MountSpec(draw(hostile), draw(hostile), False, "volume")
                                 for _ in range(draw(st.integers(0, 1))))
            node_gpus = GpuSpec(draw(st.none() | st.integers(1, 8)),
                                tuple(draw(st.lists(hostile, max_size=2))), draw(hostile), caps)
        nodes.append(dataclasses.replace(
            node, name=draw(hostile), hostname=hostname, ip=draw(hostile),
            aliases=tuple(draw(st.lists(hostile, max_size=3))), gpus=node_gpus, env=env,
            command=(*command, *tail), mounts=node_mounts,
            labels=tuple((k, draw(hostile)) for k in draw(_keys())),
        ))
    app_keys = frozenset({LABEL_APP_NAME, LABEL_APP_INSTANCE, LABEL_APP_PART_OF})
    return dataclasses.replace(
        base, run_id=draw(hostile), dist_backend=draw(hostile), network=network,
        runtime=runtime, nodes=tuple(nodes), emits_result=draw(st.booleans()),
        workdir=draw(st.none() | long_hostile),
        labels=tuple((k, draw(hostile)) for k in draw(_keys(app_keys))),
    )


# --- what the files must say -------------------------------------------------------------------


def check_header(text: str, header: str, first_body_line: str) -> list[Any]:
    """``text`` is ``header`` (comment lines only, one per line break any reader knows) plus
    the body; return the documents of the whole text (the callers compare them with the
    renderer's objects, which shows the header added none)."""
    assert text.startswith(header)
    lines = header.splitlines(keepends=True)  # splits on \r, \x85, \u2028, \x0b, ... too
    assert len(lines) == header.count("\n") > 0
    assert all(line.startswith("#") and line.endswith("\n") for line in lines), lines
    assert list(yaml.safe_load_all(header)) == []
    assert text[len(header):].startswith(first_body_line)
    return list(yaml.safe_load_all(text))


def expected_compose(plan: ClusterPlan) -> dict[str, Any]:
    """The compose document, as compose reads it, that means ``plan`` (written out by hand)."""
    rt, net = plan.runtime, plan.network
    services: dict[str, Any] = {}
    for node in plan.nodes:
        svc: dict[str, Any] = {"image": rt.image, "container_name": node.name,
                               "hostname": node.hostname, "init": rt.init,
                               "shm_size": rt.shm_size}
        if rt.ipc_mode is not None:
            svc["ipc"] = rt.ipc_mode
        if rt.memlock is not None:
            svc["ulimits"] = {"memlock": {"soft": rt.memlock, "hard": rt.memlock}}
        svc["stop_grace_period"] = f"{rt.stop_timeout_s}s"
        svc["restart"] = "no"
        svc["environment"] = dict(node.env)
        if plan.workdir is not None:
            svc["working_dir"] = plan.workdir
        svc["command"] = list(node.command)
        svc["labels"] = dict(node.labels)
        svc["networks"] = {net.name: {"ipv4_address": node.ip, "aliases": list(node.aliases)}}
        if node.mounts:
            svc["volumes"] = [{"type": m.kind, "source": m.source, "target": m.target,
                               "read_only": m.read_only} for m in node.mounts]
        if node.gpus is not None:
            device: dict[str, Any] = {"driver": node.gpus.driver}
            if node.gpus.device_ids:
                device["device_ids"] = list(node.gpus.device_ids)
            else:
                device["count"] = node.gpus.count
            device["capabilities"] = list(node.gpus.capabilities)
            svc["deploy"] = {"resources": {"reservations": {"devices": [device]}}}
        services[node.hostname] = svc
    ipam = {"subnet": net.subnet}
    if net.gateway is not None:
        ipam["gateway"] = net.gateway
    if net.ip_range is not None:
        ipam["ip_range"] = net.ip_range
    network: dict[str, Any] = {"name": net.name, "driver": "bridge"}
    opts = {}
    if net.mtu is not None:
        opts["com.docker.network.driver.mtu"] = str(net.mtu)
    if net.bridge_name is not None:
        opts["com.docker.network.bridge.name"] = net.bridge_name
    if opts:
        network["driver_opts"] = opts
    network.update(internal=net.internal, ipam={"driver": "default", "config": [ipam]},
                   labels=dict(net.labels))
    doc: dict[str, Any] = {"version": "2.4", "services": services, "networks": {net.name: network}}
    volumes = {m.source: {"name": m.source, "external": True}
               for node in plan.nodes for m in node.mounts if m.kind == "volume"}
    if volumes:
        doc["volumes"] = volumes
    return doc


def check_compose(plan: ClusterPlan) -> None:
    text = dump_compose(plan)
    docs = check_header(text, compose_header(plan), "version: ")
    assert len(docs) == 1
    assert docs[0] == render_compose(plan)
    assert compose_reads(docs[0]) == expected_compose(plan)


def _pod_specs(flavor: str, docs: list[Any]) -> list[dict[str, Any]]:
    if docs and docs[0]["kind"] == "NetworkPolicy":  # network.internal
        docs = docs[1:]
    if flavor == "indexed-job":
        assert [d["kind"] for d in docs] == ["Service", "Job"]
        return [docs[1]["spec"]["template"]["spec"]]
    if flavor == "pytorchjob":
        assert [d["kind"] for d in docs] == ["PyTorchJob"]
        return [r["template"]["spec"] for r in docs[0]["spec"]["pytorchReplicaSpecs"].values()]
    assert [d["kind"] for d in docs] == ["JobSet"]
    return [docs[0]["spec"]["replicatedJobs"][0]["template"]["spec"]["template"]["spec"]]


def _expected_env(plan: ClusterPlan, flavor: str) -> list[tuple[str, str]]:
    """(name, value as the container sees it, or ``from:<fieldPath>``) in order."""
    owned = {"MASTER_ADDR", "MASTER_PORT", "WORLD_SIZE", "RANK", "NODE_RANK"}
    out = []
    for key, value in plan.master.env:
        if key == "NETORCH_PLANNED_IP" or (flavor == "pytorchjob" and key in owned):
            continue
        if key == "MASTER_ADDR":
            value = master_addr(plan, flavor)  # type: ignore[arg-type]
        elif key == "NODE_RANK":
            value = f"from:metadata.annotations['{JOB_INDEX_ANNOTATION}']"
        elif key == "NETORCH_NODE_NAME":
            value = "from:metadata.name"
        out.append((key, value))
    gpus = plan.master.gpus
    assert gpus is not None and gpus.driver == "nvidia"
    caps = [c for c in gpus.capabilities if c != "gpu"]
    if caps:
        out.append(("NVIDIA_DRIVER_CAPABILITIES", ",".join(caps)))
    return out


def check_k8s(plan: ClusterPlan, flavor: Flavor) -> None:
    text = dump_k8s(plan, flavor)
    docs = check_header(text, k8s_header(plan, flavor), "---\n")
    assert docs == render_k8s(plan, flavor)
    assert len(docs) == (2 if flavor == "indexed-job" else 1) + plan.network.internal
    name = k8s_name(plan, flavor)
    assert is_dns_label(name)
    labels = {**dict(plan.labels), LABEL_APP_NAME: APP_NAME, LABEL_APP_INSTANCE: name,
              LABEL_APP_PART_OF: APP_NAME}
    for doc in docs:
        assert doc["metadata"]["name"] == name
        assert doc["metadata"]["labels"] == labels
    rank_var = "RANK" if flavor == "pytorchjob" else "NODE_RANK"
    command = list(plan.master.command)
    command[command.index("--node-rank") + 1] = f"<{rank_var}>"
    command[command.index("--master-addr") + 1] = "<MASTER_ADDR>"
    env = _expected_env(plan, flavor)
    for pod in _pod_specs(flavor, docs):
        (ctr,) = pod["containers"]
        assert ctr["image"] == plan.runtime.image
        (wait,) = pod["initContainers"]  # the readiness step, in the same image
        assert wait["image"] == plan.runtime.image
        assert [kubelet_expand(a) for a in wait["args"]] == ["python", "-c", WAIT_SCRIPT]
        assert [kubelet_expand(a) for a in ctr["args"]] == command
        assert [(e["name"], kubelet_expand(e["value"]) if "value" in e
                 else "from:" + e["valueFrom"]["fieldRef"]["fieldPath"])
                for e in ctr["env"]] == env
        assert ctr.get("workingDir") == plan.workdir
        assert pod.get("hostIPC", False) is (plan.runtime.ipc_mode == "host")
        volumes = {v["name"]: v for v in pod["volumes"]}
        mounts = ctr["volumeMounts"][1:]  # after /dev/shm
        assert len(mounts) == len(plan.master.mounts)
        for mount, item in zip(plan.master.mounts, mounts):
            assert item["mountPath"] == mount.target
            assert item.get("readOnly", False) is mount.read_only
            volume = volumes[item["name"]]
            if mount.kind == "bind":
                assert volume["hostPath"] == {"path": mount.source, "type": "Directory"}
            else:
                assert volume["persistentVolumeClaim"] == {"claimName": mount.source}


# --- properties --------------------------------------------------------------------------------

_SETTINGS = dict(deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                        HealthCheck.too_slow,
                                                        HealthCheck.data_too_large])


@settings(max_examples=COMPOSE_EXAMPLES, **_SETTINGS)  # type: ignore[arg-type]
@given(plan=hostile_plans(for_k8s=False))
def test_compose_round_trips_hostile_plans(plan: ClusterPlan) -> None:
    check_compose(plan)


@settings(max_examples=K8S_EXAMPLES, **_SETTINGS)  # type: ignore[arg-type]
@given(plan=hostile_plans(for_k8s=True), flavor=st.sampled_from(FLAVORS))
def test_k8s_round_trips_hostile_plans(plan: ClusterPlan, flavor: Flavor) -> None:
    check_k8s(plan, flavor)


# --- the hostile values of the issue, by hand --------------------------------------------------

INJECTION = "netorch:latest\napiVersion: v1\nkind: Pod\nspec:\n  containers:\n  - image: x\n"


def test_newline_in_image_stays_in_the_comment_and_the_value() -> None:
    base = _base_plan()
    plan = dataclasses.replace(base, runtime=dataclasses.replace(base.runtime, image=INJECTION))
    text = dump_compose(plan)
    assert "# 3 nodes x 1 ranks (world size 3), dist backend auto, image netorch:latest\\n" \
        "apiVersion: v1\\nkind: Pod\\nspec:\\n  containers:\\n  - image: x\\n." in text
    assert all(s["image"] == INJECTION for s in yaml.safe_load(text)["services"].values())
    for flavor in FLAVORS:
        docs = list(yaml.safe_load_all(dump_k8s(plan, flavor)))  # type: ignore[arg-type]
        assert "Pod" not in [d["kind"] for d in docs]
        assert len(docs) == (2 if flavor == "indexed-job" else 1) + plan.network.internal


def test_dollar_in_compose_image_ipc_and_network_name() -> None:
    base = _base_plan()
    plan = dataclasses.replace(
        base, runtime=dataclasses.replace(base.runtime, image="reg/$IMG:${TAG}", ipc_mode="$X"),
        network=dataclasses.replace(base.network, name="net$1"))
    doc = render_compose(plan)
    assert doc["services"]["master"]["image"] == "reg/$$IMG:$${TAG}"
    assert doc["services"]["master"]["ipc"] == "$$X"
    assert doc["networks"] == {"net$1": {**doc["networks"]["net$1"], "name": "net$$1"}}
    assert list(doc["services"]["master"]["networks"]) == ["net$1"]  # a key: never interpolated


def test_env_names_are_written_as_they_are() -> None:
    """Neither engine expands a key/env name, so a doubled $ there would reach the container."""
    base = _base_plan()
    nodes = tuple(dataclasses.replace(n, env=(*n.env, ("NCCL_$(A)$B", "$(A)")))
                  for n in base.nodes)
    plan = dataclasses.replace(base, nodes=nodes)
    assert render_compose(plan)["services"]["master"]["environment"]["NCCL_$(A)$B"] == "$$(A)"
    env = render_k8s(plan)[2]["spec"]["template"]["spec"]["containers"][0]["env"]
    assert {"name": "NCCL_$(A)$B", "value": "$$(A)"} in env


def test_ambiguous_scalars_are_quoted() -> None:
    """0o17, 1e3 and y are strings to PyYAML but a number or bool to Go's yaml (kubectl,
    compose v2): the files quote them."""
    base = _base_plan()
    nodes = tuple(dataclasses.replace(n, env=(*n.env, ("NCCL_A", "0o17"), ("NCCL_B", "1e3"),
                                              ("NCCL_C", "y"))) for n in base.nodes)
    plan = dataclasses.replace(base, nodes=nodes)
    for text in (dump_compose(plan), dump_k8s(plan)):
        assert "'0o17'" in text and "'1e3'" in text and "'y'" in text


def test_relative_bind_source_is_refused_by_compose() -> None:
    base = _base_plan()
    nodes = tuple(dataclasses.replace(n, mounts=(MountSpec("~/data", "/data"),))
                  for n in base.nodes)
    with pytest.raises(PlanError, match="absolute"):
        render_compose(dataclasses.replace(base, nodes=nodes))


def test_hostile_run_id_cannot_leave_the_output_directory(tmp_path: Path) -> None:
    plan = dataclasses.replace(_base_plan(), run_id="../../etc/x\n")
    assert k8s_file_name(plan) == "netorch-..-..-etc-x-.yaml"
    assert write_compose(plan, tmp_path / "out").parent == tmp_path / "out"
    from orchestrator.render.k8s import write_k8s

    assert [p.parent for p in write_k8s(plan, tmp_path / "out")] == [tmp_path / "out"]


def test_header_commands_are_shell_quoted() -> None:
    base = _base_plan()
    nodes = tuple(dataclasses.replace(n, mounts=(MountSpec("vol; rm -rf ~", "/v", False,
                                                           "volume"),)) for n in base.nodes)
    header = compose_header(dataclasses.replace(base, nodes=nodes))
    assert "#   docker volume create 'vol; rm -rf ~'\n" in header


def test_comment_text() -> None:
    assert comment_text("netorch:latest") == "netorch:latest"
    assert comment_text("a\nb\r\x85\u2028\u202e\x00\\") == "a\\nb\\r\\x85\\u2028\\u202e\\x00\\\\"
    assert comment_text("日本 é") == "日本 é"


COMPOSE_BIN = shutil.which("docker-compose")


def dollars(text: str) -> str:
    return text.replace("$", "$$")


@pytest.mark.skipif(COMPOSE_BIN is None, reason="docker-compose is not installed")
def test_docker_compose_config_reads_the_plans_values(tmp_path: Path) -> None:
    """The real engine (``docker-compose config`` interpolates and validates; no daemon): the
    free-form values it passes to Docker are the plan's, byte for byte."""
    base = _base_plan()
    value = "a$b $$c ${HOME} $(X) # ' \" \n--- : é"
    nodes = tuple(dataclasses.replace(
        n, env=(*n.env, ("NCCL_HOSTILE", value)), command=(*n.command, value, "$"),
        labels=(*n.labels, ("io.example.hostile", value)),
        mounts=(MountSpec("/tmp/we$ird dir", "/x$y"),),
    ) for n in base.nodes)
    plan = dataclasses.replace(
        base, nodes=nodes, workdir="/w$(d)",
        runtime=dataclasses.replace(base.runtime, image="reg.example/$img:1"))
    path = write_compose(plan, tmp_path)
    out = subprocess.run([COMPOSE_BIN or "docker-compose", "-f", str(path), "config"],
                         capture_output=True, text=True, timeout=120,
                         env={"PATH": "/usr/bin:/bin", "HOME": "/nonexistent"})
    assert out.returncode == 0, out.stderr
    svc = yaml.safe_load(out.stdout)["services"]["master"]
    # `config` prints what it interpolated with $ escaped again (so its output is a usable
    # compose file): escaping is one to one, so equal escaped values mean equal values.
    assert svc["environment"]["NCCL_HOSTILE"] == dollars(value)
    assert svc["command"][-2:] == [dollars(value), "$$"]
    assert svc["labels"]["io.example.hostile"] == dollars(value)
    assert svc["image"] == "reg.example/$$img:1"
    assert svc["working_dir"] == "/w$$(d)"
    assert svc["volumes"][0]["source"] == "/tmp/we$$ird dir"
    assert svc["volumes"][0]["target"] == "/x$$y"


# --- the CLI: hostile settings ----------------------------------------------------------------

CLI_VALUES = [
    "a\nb", "x\n---\napiVersion: v1\nkind: Pod", "$(X)", "$HOME", "${X:-y}", "a$b", "#x",
    "'\"", "é\u2028f", "\x85", "0o17", "y", "x" * 3000,
]
# Settings whose strings reach the renderers (env.NCCL_*: a user variable's value).
CLI_FIELDS = ["cluster.image", "cluster.name", "network.name", "network.bridge_name",
              "network.interface", "docker.shm_size", "docker.ipc_mode", "env.NCCL_HOSTILE"]


def _render_cli(kind: str, out: Path, args: list[str]) -> Any:
    from orchestrator.cli import app

    extra = ["--flavor", "jobset"] if kind == "k8s" else []
    return CliRunner().invoke(app, ["render", kind, "-o", str(out), "--run-id", "cli-hostile",
                                    *extra, *args])


def _check_cli(kind: str, field: str, result: Any, out: Path, pairs: dict[str, str],
               config: Path | None = None) -> None:
    """Exit 2 with one line naming ``field`` (or the ``config`` file), or a file that parses back
    to the documents of the plan that ``config`` and ``pairs`` (the ``--set`` items; the
    environment is already set) give."""
    assert "Traceback" not in result.output, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert result.exit_code in (0, 2), result.output
    if result.exit_code == 2:
        lines = result.output.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error:"), result.output
        named = field.split(".")[-1] in lines[0] or field in lines[0]
        if config is not None:
            named = (field.split(".")[-1].lower() in lines[0].lower()
                     or config.name in lines[0])
        assert named, lines[0]
        return
    settings_ = load_settings(config, overrides=overrides_from_pairs(pairs))
    plan = build_plan(settings_, "cli-hostile", "docker")
    if kind == "compose":
        text = (out / COMPOSE_FILE_NAME).read_text(encoding="utf-8")
        assert check_header(text, compose_header(plan), "version: ") == [render_compose(plan)]
    else:
        text = (out / k8s_file_name(plan)).read_text(encoding="utf-8")
        assert check_header(text, k8s_header(plan, "jobset"), "---\n") == render_k8s(plan,
                                                                                      "jobset")


@pytest.mark.parametrize("kind", ["compose", "k8s"])
@pytest.mark.parametrize("field", CLI_FIELDS)
def test_cli_hostile_set_values(kind: str, field: str, tmp_path: Path) -> None:
    for i, value in enumerate(CLI_VALUES):
        out = tmp_path / f"set-{i}"
        result = _render_cli(kind, out, ["--set", f"{field}={value}"])
        _check_cli(kind, field, result, out, {field: value.strip()})  # --set strips its value


@pytest.mark.parametrize("kind", ["compose", "k8s"])
@pytest.mark.parametrize("field", CLI_FIELDS)
def test_cli_hostile_env_values(kind: str, field: str, tmp_path: Path,
                                monkeypatch: pytest.MonkeyPatch) -> None:
    variable = "NETORCH_" + field.upper().replace(".", "__")
    for i, value in enumerate(CLI_VALUES):
        monkeypatch.setenv(variable, value)
        out = tmp_path / f"env-{i}"
        _check_cli(kind, field, _render_cli(kind, out, []), out, {})


@pytest.mark.parametrize("kind", ["compose", "k8s"])
def test_cli_hostile_user_job(kind: str, tmp_path: Path) -> None:
    """A user's job (``render ... -e NAME=VALUE -- COMMAND``) with hostile arguments and env
    values renders to the documents of its plan."""
    from orchestrator.app import render_workload

    values = [v for v in CLI_VALUES if v.strip()]
    command = ["python", "train.py", *values]
    env = {f"NCCL_HOSTILE_{i}": v for i, v in enumerate(values)}
    out = tmp_path / "out"
    args = [a for name, v in env.items() for a in ("-e", f"{name}={v}")]
    result = _render_cli(kind, out, [*args, "--", *command])
    assert result.exit_code == 0, result.output
    settings_ = load_settings(overrides={"run": {"command": command, "env": env}})
    plan = build_plan(settings_, "cli-hostile", "docker", render_workload(settings_))
    assert [a for a in plan.master.command if a in values] == values
    if kind == "compose":
        text = (out / COMPOSE_FILE_NAME).read_text(encoding="utf-8")
        assert check_header(text, compose_header(plan), "version: ") == [render_compose(plan)]
        check_compose(plan)
    else:
        text = (out / k8s_file_name(plan)).read_text(encoding="utf-8")
        assert check_header(text, k8s_header(plan, "jobset"), "---\n") == render_k8s(plan,
                                                                                    "jobset")


# ---- hostile values through a TOML config file (hypothesis) ----------------------------------

TOML_CASES = 120


def _toml_string(value: str) -> str:
    """``value`` as a TOML basic string (JSON's escapes are TOML's, bar DEL and surrogates)."""
    import json

    return json.dumps(value, ensure_ascii=False).replace("\x7f", "\\u007f")


def _toml_for(field: str, value: str) -> str:
    section, key = field.split(".", 1)
    return f"[{section}]\n{key} = {_toml_string(value)}\n"


HOSTILE_TEXT = st.text(
    alphabet=st.one_of(st.sampled_from(list("\n\r\t$#'\"{}()[]:,-.& ~!=\\")),
                       st.characters(blacklist_categories=("Cs",))),
    max_size=60)


@settings(max_examples=TOML_CASES, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(field=st.sampled_from(CLI_FIELDS), value=HOSTILE_TEXT,
       kind=st.sampled_from(["compose", "k8s"]))
def test_toml_hostile_values(field: str, value: str, kind: str, tmp_path: Path) -> None:
    """Through ``--config FILE``: exit 0 with a render that parses back to the plan's documents,
    or exit 2 with one line naming the field; never a traceback."""
    case = tmp_path / secrets_token()
    case.mkdir()
    config = case / "hostile.toml"
    config.write_text(_toml_for(field, value), encoding="utf-8")
    out = case / "out"
    result = _render_cli(kind, out, ["-c", str(config)])
    _check_cli(kind, field, result, out, {}, config)


def secrets_token() -> str:
    import secrets

    return secrets.token_hex(4)
