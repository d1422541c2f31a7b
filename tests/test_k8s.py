"""deploy/k8s: the manifests are valid Kubernetes objects and agree with the code they deploy.

No cluster runs here, so these checks are what can be held without one: every object against
the Kubernetes API schemas (kubernetes-validate, strict: an unknown field is an error), and the
manifests against the code: run targets, setting names and values, Envoy's upstreams, ports,
probes, the generated ConfigMap of Envoy's configuration and descriptor set.
"""

from __future__ import annotations

import base64
import copy
import importlib.util
import os
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from cartlytics.common.config import SETTINGS, Config
from cartlytics.modules import TARGETS

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("gen_k8s", ROOT / "tools" / "gen_k8s.py")
assert _spec is not None and _spec.loader is not None
gen_k8s = importlib.util.module_from_spec(_spec)
sys.modules["gen_k8s"] = gen_k8s  # dataclasses look their module up there
_spec.loader.exec_module(gen_k8s)
K8S = ROOT / "deploy" / "k8s"
KUBERNETES_VERSION = "1.33.0"
IMAGE = "cartlytics"
SECRET_KEYS = {"clickhouse-password", "bootstrap-key", "ip-salt"}
# Environment variables of our containers that are not cartlytics settings.
OTHER_ENV = {"CLICKHOUSE_PASSWORD"}


def _kustomization() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    return data


def _objects() -> Iterator[tuple[str, dict[str, Any]]]:
    for name in _kustomization()["resources"]:
        for document in yaml.safe_load_all((K8S / name).read_text()):
            if document:
                yield name, document


OBJECTS = list(_objects())


def _by_kind(kind: str) -> dict[str, dict[str, Any]]:
    return {o["metadata"]["name"]: o for _, o in OBJECTS if o["kind"] == kind}


def _pod_specs() -> Iterator[tuple[str, dict[str, Any]]]:
    for _, o in OBJECTS:
        if o["kind"] in ("Deployment", "StatefulSet", "Job"):
            yield o["metadata"]["name"], o["spec"]["template"]["spec"]


def _our_containers() -> Iterator[tuple[str, dict[str, Any]]]:
    for name, spec in _pod_specs():
        for container in [*spec.get("initContainers", []), *spec["containers"]]:
            if container["image"].split(":")[0] == IMAGE:
                yield name, container


def test_generated_manifests_are_current() -> None:
    assert gen_k8s.main(["--check"]) == 0, "run `make gen`"


def test_the_kustomization_lists_every_manifest() -> None:
    listed = set(_kustomization()["resources"])
    present = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == present


@pytest.mark.parametrize(
    "obj",
    [o for _, o in OBJECTS],
    ids=[f"{f}:{o['kind']}/{o['metadata']['name']}" for f, o in OBJECTS],
)
def test_every_object_is_valid_kubernetes(obj: dict[str, Any]) -> None:
    kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
    assert obj["kind"] == "Namespace" or obj["metadata"]["namespace"] == "cartlytics"


def test_a_schema_error_is_caught() -> None:
    """The check above can fail: a misspelt field is refused."""
    deployment = dict(_by_kind("Deployment")["ingest"])
    broken = {**deployment, "spec": {**deployment["spec"], "replica": 2}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSION, strict=True)


def test_every_service_runs_a_known_target_with_grpc_probes() -> None:
    deployments = _by_kind("Deployment")
    for name in ("ingest", "metrics", "export", "admin"):
        container = deployments[name]["spec"]["template"]["spec"]["containers"][0]
        assert container["args"] == ["run", "--target", name]
        assert name in TARGETS
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        assert ports["grpc"] == 50051
        for probe in ("readinessProbe", "livenessProbe"):
            assert container[probe]["grpc"]["port"] == ports["grpc"]
        init = deployments[name]["spec"]["template"]["spec"]["initContainers"][0]
        assert "cartlytics migrate --check" in init["command"][-1]
    job = _by_kind("Job")["cartlytics-migrate"]
    assert job["spec"]["template"]["spec"]["containers"][0]["args"] == ["migrate"]


def test_environment_names_are_settings_and_values_parse() -> None:
    known = {s.env for s in SETTINGS.values()} | OTHER_ENV
    config = _by_kind("ConfigMap")["cartlytics-config"]["data"]
    assert set(config) <= known
    for _, container in _our_containers():
        assert [e["configMapRef"]["name"] for e in container["envFrom"]] == ["cartlytics-config"]
        for variable in container.get("env", []):
            assert variable["name"] in known, variable["name"]
            secret = variable.get("valueFrom", {}).get("secretKeyRef")
            if secret:
                assert secret["name"] == "cartlytics-keys" and secret["key"] in SECRET_KEYS
    # What a pod's environment comes to (secrets filled in) is a configuration that starts:
    # replicas leave migrations to the Job, and listen beyond localhost.
    env = {**config, "CLICKHOUSE_URL": "clickhouse://u:p@clickhouse:9000/analytics"}
    parsed = Config.from_env({**env, "ANALYTICS_BOOTSTRAP_KEY": "k", "ANALYTICS_IP_SALT": "s"})
    assert parsed.migrate_on_start is False
    assert parsed.grpc_host == "0.0.0.0" and parsed.redis_url.startswith("redis://redis:")
    readme = (K8S / "README.md").read_text()
    assert all(key in readme for key in SECRET_KEYS), "the README creates every secret key"


def test_envoy_upstreams_are_headless_services_of_the_right_targets() -> None:
    envoy = yaml.safe_load((ROOT / "gateway" / "envoy.yaml").read_text())
    services = _by_kind("Service")
    deployments = _by_kind("Deployment")
    clusters = envoy["static_resources"]["clusters"]
    assert {c["name"] for c in clusters} == {"ingest", "metrics", "export", "privacy"}
    for cluster in clusters:
        endpoint = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]
        address = endpoint["address"]["socket_address"]
        service = services[address["address"]]
        assert service["spec"]["clusterIP"] == "None"  # Envoy balances per pod
        assert [p["port"] for p in service["spec"]["ports"]] == [address["port_value"]]
        target = deployments[address["address"]]["spec"]["template"]["spec"]["containers"][0]
        assert target["args"][-1] == cluster["name"]
    assert "admin" not in {c["name"] for c in clusters}  # never on the public gateway


def test_envoy_gets_its_configuration_and_descriptor_set_byte_for_byte() -> None:
    config_map = _by_kind("ConfigMap")["envoy-config"]
    assert config_map["data"]["envoy.yaml"] == (ROOT / "gateway" / "envoy.yaml").read_text()
    descriptor = base64.b64decode(config_map["binaryData"]["analytics.pb"])
    assert descriptor == (ROOT / "src" / "cartlytics" / "gen" / "analytics.pb").read_bytes()
    gateway = _by_kind("Deployment")["gateway"]["spec"]["template"]["spec"]
    mount = gateway["containers"][0]["volumeMounts"][0]
    assert mount["mountPath"] == "/etc/envoy"  # where envoy.yaml reads analytics.pb from
    assert "/etc/envoy/analytics.pb" in config_map["data"]["envoy.yaml"]


def test_every_container_has_requests_and_a_memory_limit() -> None:
    for name, spec in _pod_specs():
        for container in [*spec.get("initContainers", []), *spec["containers"]]:
            resources = container["resources"]
            assert resources["requests"], name
            assert resources["limits"]["memory"], name


# --- The cluster overlay (deploy/k8s-cluster) ---------------------------------------------------
# Rendered by kustomize itself (what `kubectl apply -k` runs), pinned and built from the Go module
# proxy into .tools/bin on first use; then held to the same rules as the base, and to what a
# ClickHouse cluster needs: unique macros, every server in remote_servers once, Keeper's ids.

CLUSTER = ROOT / "deploy" / "k8s-cluster"
KUSTOMIZE_VERSION = "v5.7.1"
KUSTOMIZE = ROOT / ".tools" / "bin" / "kustomize"
HOSTNAME = "kubernetes.io/hostname"
Objects = list[dict[str, Any]]


def _kustomize() -> Path:
    """kustomize at KUSTOMIZE_VERSION (built with `go install` when missing or another version)."""
    if KUSTOMIZE.exists():
        version = subprocess.run([KUSTOMIZE, "version"], capture_output=True, text=True).stdout
        if version.strip() == KUSTOMIZE_VERSION:
            return KUSTOMIZE
    subprocess.run(
        ["go", "install", f"sigs.k8s.io/kustomize/kustomize/v5@{KUSTOMIZE_VERSION}"],
        env={**os.environ, "GOBIN": str(KUSTOMIZE.parent)},
        check=True,
        timeout=900,
    )
    return KUSTOMIZE


def render(directory: Path) -> Objects:
    """`kustomize build <directory>`: the objects `kubectl apply -k` would send."""
    built = subprocess.run(
        [_kustomize(), "build", directory], capture_output=True, text=True, timeout=300
    )
    assert built.returncode == 0, built.stderr
    return [document for document in yaml.safe_load_all(built.stdout) if document]


@pytest.fixture(scope="module")
def cluster() -> Objects:
    return render(CLUSTER)


def _of(objects: Objects, kind: str) -> dict[str, dict[str, Any]]:
    return {o["metadata"]["name"]: o for o in objects if o["kind"] == kind}


def _workloads(objects: Objects) -> Iterator[dict[str, Any]]:
    return (o for o in objects if o["kind"] in ("Deployment", "StatefulSet", "Job"))


def _containers(pod: dict[str, Any]) -> list[dict[str, Any]]:
    return [*pod.get("initContainers", []), *pod["containers"]]


def _selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(key) == value for key, value in selector.items())


def _clickhouse_servers(objects: Objects) -> dict[str, dict[str, Any]]:
    """The StatefulSets running clickhouse-server (not Keeper, which runs the same image)."""
    return {
        name: o
        for name, o in _of(objects, "StatefulSet").items()
        if any(c["name"] == "clickhouse" for c in o["spec"]["template"]["spec"]["containers"])
    }


def _pods(statefulset: dict[str, Any]) -> list[str]:
    name = statefulset["metadata"]["name"]
    return [f"{name}-{ordinal}" for ordinal in range(statefulset["spec"]["replicas"])]


def _env_of(container: dict[str, Any], pod: str) -> dict[str, str]:
    """A container's environment as it is in pod `pod`: literal values, the pod's name from the
    downward API, a secret as `secret-<key>`, and $(VAR) expanded from the variables before it
    (Kubernetes' rule)."""
    env: dict[str, str] = {}
    for variable in container.get("env", []):
        if "secretKeyRef" in variable.get("valueFrom", {}):
            env[variable["name"]] = "secret-" + variable["valueFrom"]["secretKeyRef"]["key"]
        elif "value" in variable:
            value = variable["value"]
            for name, earlier in env.items():
                value = value.replace(f"$({name})", earlier)
            env[variable["name"]] = value
        elif variable["valueFrom"].get("fieldRef", {}).get("fieldPath") == "metadata.name":
            env[variable["name"]] = pod
    return env


def _mounted_file(objects: Objects, statefulset: dict[str, Any], path: str) -> ET.Element:
    """The XML file that `path` in the StatefulSet's first container reads, from its ConfigMap."""
    spec = statefulset["spec"]["template"]["spec"]
    mount = next(
        m
        for m in spec["containers"][0]["volumeMounts"]
        if path == m["mountPath"] or path.startswith(m["mountPath"] + "/")
    )
    volume = next(v for v in spec["volumes"] if v["name"] == mount["name"])
    config_map = _of(objects, "ConfigMap")[volume["configMap"]["name"]]
    key = mount.get("subPath") or path.removeprefix(mount["mountPath"] + "/")
    return ET.fromstring(config_map["data"][key])


def _port(container: dict[str, Any], name: str) -> int:
    return int(next(p["containerPort"] for p in container["ports"] if p["name"] == name))


def _text(element: ET.Element, path: str) -> str:
    found = element.find(path)
    assert found is not None and found.text is not None, path
    return found.text


def _from_env(element: ET.Element, path: str) -> str:
    """The variable a config element takes its value from (`<x from_env="VAR"/>`)."""
    found = element.find(path)
    assert found is not None, path
    return found.attrib["from_env"]


def check_clickhouse_cluster(objects: Objects) -> None:
    """What a cluster of replicated tables behind Distributed ones needs of its servers."""
    servers = _clickhouse_servers(objects)
    assert servers, "no ClickHouse StatefulSet"
    services = _of(objects, "Service")
    cluster_name = _of(objects, "ConfigMap")["cartlytics-config"]["data"]["CLICKHOUSE_CLUSTER"]
    macros: dict[str, tuple[str, str]] = {}  # pod -> (shard, replica)
    hosts: dict[str, str] = {}  # pod -> the name other servers reach it by
    configs = []
    for statefulset in servers.values():
        spec = statefulset["spec"]
        container = spec["template"]["spec"]["containers"][0]
        config = _mounted_file(objects, statefulset, "/etc/clickhouse-server/config.d/cluster.xml")
        configs.append(ET.tostring(config))
        # The governing Service names each pod, before it is ready (replicas must meet to be).
        governing = services[spec["serviceName"]]["spec"]
        assert governing["clusterIP"] == "None" and governing["publishNotReadyAddresses"]
        assert _selects(governing["selector"], spec["template"]["metadata"]["labels"])
        for pod in _pods(statefulset):
            env = _env_of(container, pod)
            macros[pod] = (
                env[_from_env(config, "macros/shard")],
                env[_from_env(config, "macros/replica")],
            )
            hosts[pod] = f"{pod}.{spec['serviceName']}"
            # The name other replicas fetch this one's parts from is this pod's.
            assert env[_from_env(config, "interserver_http_host")] == hosts[pod]
    assert len(set(configs)) == 1, "every server reads the same cluster.xml"
    # Each replica's Keeper paths are its own: a sharded table's replica is {replica} under its
    # shard's path, a table every server holds whole is {shard}-{replica} under one path
    # (common/storage/layout.py).
    assert len(set(macros.values())) == len(macros), macros
    assert len({f"{shard}-{replica}" for shard, replica in macros.values()}) == len(macros)
    remote = config.find(f"remote_servers/{cluster_name}")
    assert remote is not None, f"CLICKHOUSE_CLUSTER={cluster_name} is not in remote_servers"
    listed: list[str] = []
    for shard_element in remote.findall("shard"):
        assert _text(shard_element, "internal_replication") == "true"
        assert int(_text(shard_element, "weight")) >= 1
        members = [_text(r, "host") for r in shard_element.findall("replica")]
        listed += members
        pods = [pod for pod, host in hosts.items() if host in members]
        # A remote_servers shard is one macro shard, all of its replicas and nothing else.
        assert pods and len({macros[pod][0] for pod in pods}) == 1, members
        assert {hosts[p] for p in hosts if macros[p][0] == macros[pods[0]][0]} == set(members)
        for r in shard_element.findall("replica"):
            assert _text(r, "port") == str(_port(container, "native"))
        # The storage reads and writes a shard on its first replica up (in_order): ordinal 0,
        # the pods the placement spreads over nodes (check_placement).
        assert members[0].split(".")[0].endswith("-0"), members
    assert sorted(listed) == sorted(hosts.values()), "every server listed exactly once"
    # Keeper: the servers' <zookeeper> is every Keeper pod, whose raft ids match their ordinals.
    keeper = _of(objects, "StatefulSet")["keeper"]
    keeper_container = keeper["spec"]["template"]["spec"]["containers"][0]
    keeper_hosts = {f"{pod}.{keeper['spec']['serviceName']}": pod for pod in _pods(keeper)}
    nodes = [(_text(n, "host"), _text(n, "port")) for n in config.findall("zookeeper/node")]
    assert sorted(h for h, _ in nodes) == sorted(keeper_hosts)
    assert {p for _, p in nodes} == {str(_port(keeper_container, "client"))}
    keeper_config = _mounted_file(objects, keeper, "/etc/clickhouse-keeper/keeper.xml")
    raft = {
        _text(s, "id"): _text(s, "hostname")
        for s in keeper_config.findall("keeper_server/raft_configuration/server")
    }
    assert sorted(raft.values()) == sorted(keeper_hosts)
    id_from = _from_env(keeper_config, "keeper_server/server_id")
    for host, pod in keeper_hosts.items():
        # The container's own command computes the id: run the part before `exec` in a shell.
        setup = keeper_container["command"][-1].split(" && exec ")[0]
        env = {**_env_of(keeper_container, pod), "PATH": os.environ["PATH"]}
        shell = subprocess.run(
            ["sh", "-c", f'{setup} && echo "${id_from}"'], env=env, capture_output=True, text=True
        )
        assert raft[shell.stdout.strip()] == host, (pod, shell.stdout, shell.stderr)


def check_placement(objects: Objects) -> None:
    """Replicas of a shard (and Keeper servers) never share a node, and a voluntary disruption
    (a node drained) takes at most one of them at a time."""
    budgets = _of(objects, "PodDisruptionBudget").values()
    for statefulset in [
        *_clickhouse_servers(objects).values(),
        _of(objects, "StatefulSet")["keeper"],
    ]:
        template = statefulset["spec"]["template"]
        labels = template["metadata"]["labels"]
        terms = template["spec"]["affinity"]["podAntiAffinity"][
            "requiredDuringSchedulingIgnoredDuringExecution"
        ]
        assert any(
            t["topologyKey"] == HOSTNAME and _selects(t["labelSelector"]["matchLabels"], labels)
            for t in terms
        ), statefulset["metadata"]["name"]
        if statefulset is not _of(objects, "StatefulSet").get("keeper"):
            servers = [
                o["spec"]["template"]["metadata"]["labels"]
                for o in _clickhouse_servers(objects).values()
            ]
            preferred = template["spec"]["affinity"]["podAntiAffinity"][
                "preferredDuringSchedulingIgnoredDuringExecution"
            ]
            assert any(
                t["podAffinityTerm"].get("matchLabelKeys") == [gen_k8s.POD_INDEX]
                and t["podAffinityTerm"]["topologyKey"] == HOSTNAME
                and all(
                    _selects(t["podAffinityTerm"]["labelSelector"]["matchLabels"], labels)
                    for labels in servers
                )
                for t in preferred
            ), "the shards' first replicas spread over nodes"
        # Its budget selects its pods and no other server's.
        own = [b for b in budgets if _selects(b["spec"]["selector"]["matchLabels"], labels)]
        assert len(own) == 1 and own[0]["spec"]["maxUnavailable"] == 1
        for other in _workloads(objects):
            if other is not statefulset:
                other_labels = other["spec"]["template"]["metadata"]["labels"]
                assert not _selects(own[0]["spec"]["selector"]["matchLabels"], other_labels)


def test_the_cluster_overlay_is_valid_kubernetes(cluster: Objects) -> None:
    for obj in cluster:
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
        assert obj["kind"] == "Namespace" or obj["metadata"]["namespace"] == "cartlytics"


def test_the_cluster_overlay_replaces_the_single_server(cluster: Objects) -> None:
    statefulsets = _of(cluster, "StatefulSet")
    assert "clickhouse" not in statefulsets and "ingest" not in _of(cluster, "Deployment")
    # CLICKHOUSE_URL names the Service `clickhouse`: it reaches every server of the cluster.
    selector = _of(cluster, "Service")["clickhouse"]["spec"]["selector"]
    for statefulset in statefulsets.values():
        labels = statefulset["spec"]["template"]["metadata"]["labels"]
        assert _selects(selector, labels) == (statefulset in _clickhouse_servers(cluster).values())
    images = {
        c["image"]
        for o in [*_clickhouse_servers(cluster).values(), statefulsets["keeper"]]
        for c in o["spec"]["template"]["spec"]["containers"]
    }
    base = _by_kind("StatefulSet")["clickhouse"]["spec"]["template"]["spec"]["containers"][0]
    assert images == {base["image"]}, "the cluster runs the base's ClickHouse version"


def test_the_cluster_overlay_is_a_consistent_clickhouse_cluster(cluster: Objects) -> None:
    check_clickhouse_cluster(cluster)
    check_placement(cluster)
    shards = {
        s["spec"]["template"]["metadata"]["labels"]["cartlytics.io/shard"]
        for s in _clickhouse_servers(cluster).values()
    }
    assert len(shards) == gen_k8s.SHARDS and len(_clickhouse_servers(cluster)) == gen_k8s.SHARDS
    assert {s["spec"]["replicas"] for s in _clickhouse_servers(cluster).values()} == {
        gen_k8s.REPLICAS
    }


@pytest.mark.parametrize(("shards", "replicas"), [(3, 3), (1, 2)])
def test_another_shape_is_as_consistent(shards: int, replicas: int, tmp_path: Path) -> None:
    """The shape is a parameter of the generator: any other gives a cluster as consistent (the
    3-shard one with a new third shard weighted to fill sooner)."""
    shutil.copytree(K8S, tmp_path / "k8s")
    overlay = tmp_path / "k8s-cluster"
    overlay.mkdir()
    for name in ("kustomization.yaml", "scaling.yaml"):
        shutil.copy(CLUSTER / name, overlay / name)
    weights = (1, 1, 3) if shards == 3 else ()
    shape = gen_k8s.Shape(shards, replicas, weights=weights)
    for name, write in gen_k8s.cluster_outputs(shape).items():
        (overlay / name).write_text(write())
    objects = render(overlay)
    config_map = next(o for o in objects if "cluster.xml" in o.get("data", {}))
    listed = ET.fromstring(config_map["data"]["cluster.xml"]).findall("remote_servers/*/shard")
    assert tuple(int(_text(s, "weight")) for s in listed) == (weights or (1,) * shards)
    check_clickhouse_cluster(objects)
    check_placement(objects)
    pods = [pod for s in _clickhouse_servers(objects).values() for pod in _pods(s)]
    assert len(pods) == shards * replicas


def _with_cluster_xml(objects: Objects, edit: Callable[[str], str]) -> Objects:
    edited = copy.deepcopy(objects)
    for o in edited:
        if o["kind"] == "ConfigMap" and "cluster.xml" in o.get("data", {}):
            o["data"]["cluster.xml"] = edit(o["data"]["cluster.xml"])
    return edited


def test_the_cluster_checks_can_fail(cluster: Objects) -> None:
    """A server listed twice in remote_servers, a {replica} macro two replicas share, two
    StatefulSets claiming one shard, replicas of a shard allowed on one node: each is refused."""

    def list_first_twice(xml: str) -> str:
        first, end = xml.index("<replica>"), xml.index("</replica>") + len("</replica>")
        return xml[:end] + xml[first:]

    def replica_macro_from_the_shard(xml: str) -> str:
        return xml.replace(
            '<replica from_env="CLICKHOUSE_REPLICA"/>', '<replica from_env="CLICKHOUSE_SHARD"/>'
        )

    one_shard = copy.deepcopy(cluster)
    for statefulset in _clickhouse_servers(one_shard).values():
        for variable in statefulset["spec"]["template"]["spec"]["containers"][0]["env"]:
            if variable["name"] == "CLICKHOUSE_SHARD":
                variable["value"] = "1"
    for broken in (
        _with_cluster_xml(cluster, list_first_twice),
        _with_cluster_xml(cluster, replica_macro_from_the_shard),
        one_shard,
    ):
        with pytest.raises(AssertionError):
            check_clickhouse_cluster(broken)
    one_zone = copy.deepcopy(cluster)
    statefulset = next(iter(_clickhouse_servers(one_zone).values()))
    affinity = statefulset["spec"]["template"]["spec"]["affinity"]["podAntiAffinity"]
    for term in affinity["requiredDuringSchedulingIgnoredDuringExecution"]:
        term["topologyKey"] = "topology.kubernetes.io/zone"  # two replicas may share a node
    with pytest.raises(AssertionError):
        check_placement(one_zone)


def test_the_cluster_overlay_env_names_are_settings_and_values_parse(cluster: Objects) -> None:
    known = {s.env for s in SETTINGS.values()} | OTHER_ENV
    config = _of(cluster, "ConfigMap")["cartlytics-config"]["data"]
    assert set(config) <= known
    ours = [
        (o["metadata"]["name"], c)
        for o in _workloads(cluster)
        for c in _containers(o["spec"]["template"]["spec"])
        if c["image"].split(":")[0] == IMAGE
    ]
    assert {name for name, _ in ours} >= {"ingest", "metrics", "export", "cartlytics-migrate"}
    for name, container in ours:
        assert [e["configMapRef"]["name"] for e in container["envFrom"]] == ["cartlytics-config"]
        for variable in container.get("env", []):
            assert variable["name"] in known, variable["name"]
        secrets = {"ANALYTICS_BOOTSTRAP_KEY": "k", "ANALYTICS_IP_SALT": "s"}
        parsed = Config.from_env({**config, **secrets, **_env_of(container, name)})
        assert parsed.clickhouse_cluster == gen_k8s.CLUSTER_NAME, name
        assert parsed.migrate_on_start is False


def test_the_ingest_log_is_on_a_volume_of_each_ingest_pod(cluster: Objects) -> None:
    ingest = _of(cluster, "StatefulSet")["ingest"]
    pod = ingest["spec"]["template"]["spec"]
    container = pod["containers"][0]
    env = _env_of(container, "ingest-0")
    assert Config.from_env({"ANALYTICS_INGEST_LOG": env["ANALYTICS_INGEST_LOG"]}).ingest_log
    claims = {c["metadata"]["name"] for c in ingest["spec"]["volumeClaimTemplates"]}
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    assert mounts[env["ANALYTICS_INGEST_LOG_DIR"]] in claims
    assert pod["securityContext"]["fsGroup"] == pod["securityContext"]["runAsUser"]
    # Room for the gRPC drain and then the log's store, each ANALYTICS_SHUTDOWN_GRACE at most.
    grace = float(
        _of(cluster, "ConfigMap")["cartlytics-config"]["data"]["ANALYTICS_SHUTDOWN_GRACE"]
    )
    assert pod["terminationGracePeriodSeconds"] > 2 * grace
    assert _of(cluster, "Service")[ingest["spec"]["serviceName"]]["spec"]["clusterIP"] == "None"


def test_the_autoscalers_target_what_exists(cluster: Objects) -> None:
    autoscalers = _of(cluster, "HorizontalPodAutoscaler")
    assert {"ingest", "metrics", "export", "gateway"} <= set(autoscalers)
    for autoscaler in autoscalers.values():
        assert autoscaler["apiVersion"] == "autoscaling/v2"
        ref = autoscaler["spec"]["scaleTargetRef"]
        target = _of(cluster, ref["kind"])[ref["name"]]
        assert target["apiVersion"] == ref["apiVersion"]
        # The autoscaler owns the count: one in the manifest would undo its scaling at each apply.
        assert "replicas" not in target["spec"], ref["name"]
        assert autoscaler["spec"]["minReplicas"] >= 2
        resources = {m["resource"]["name"] for m in autoscaler["spec"]["metrics"]}
        for container in target["spec"]["template"]["spec"]["containers"]:
            assert resources <= set(container["resources"]["requests"])  # utilization of these
        labels = target["spec"]["template"]["metadata"]["labels"]
        assert any(
            _selects(b["spec"]["selector"]["matchLabels"], labels)
            for b in _of(cluster, "PodDisruptionBudget").values()
        )


def test_every_cluster_container_has_requests_and_a_memory_limit(cluster: Objects) -> None:
    for workload in _workloads(cluster):
        for container in _containers(workload["spec"]["template"]["spec"]):
            resources = container["resources"]
            assert resources["requests"], workload["metadata"]["name"]
            assert resources["limits"]["memory"], workload["metadata"]["name"]


def test_envoy_upstreams_still_reach_their_targets_in_the_cluster_overlay(cluster: Objects) -> None:
    """ingest is a StatefulSet there: Envoy's upstream Service must select its pods still."""
    envoy = yaml.safe_load((ROOT / "gateway" / "envoy.yaml").read_text())
    services = _of(cluster, "Service")
    for upstream in envoy["static_resources"]["clusters"]:
        endpoint = upstream["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]
        service = services[endpoint["address"]["socket_address"]["address"]]["spec"]
        assert service["clusterIP"] == "None"
        targets = [
            w["kind"]
            for w in _workloads(cluster)
            if _selects(service["selector"], w["spec"]["template"]["metadata"]["labels"])
            and w["spec"]["template"]["spec"]["containers"][0].get("args", [])[-1:]
            == [upstream["name"]]
        ]
        assert len(targets) == 1, (upstream["name"], targets)


def test_the_cluster_kustomization_uses_every_file_of_its_folder() -> None:
    kustomization = yaml.safe_load((CLUSTER / "kustomization.yaml").read_text())
    used = {r for r in kustomization["resources"] if not r.startswith("..")}
    used |= {f for g in kustomization["configMapGenerator"] for f in g["files"]}
    present = {p.name for p in CLUSTER.iterdir()} - {"kustomization.yaml"}
    assert used == present
    generated = set(gen_k8s.cluster_outputs(gen_k8s.Shape()))
    assert generated <= present and "scaling.yaml" in present - generated


def test_every_reference_in_the_cluster_overlay_resolves(cluster: Objects) -> None:
    check_references(cluster)
    broken = copy.deepcopy(cluster)
    keeper = _of(broken, "StatefulSet")["keeper"]["spec"]["template"]["spec"]
    keeper["volumes"][0]["configMap"]["name"] = "keeper-config"  # without kustomize's hash
    with pytest.raises(AssertionError):
        check_references(broken)


def check_references(objects: Objects) -> None:
    """Mounts name a volume or claim, ConfigMaps and Secret keys exist, probes name a port."""
    config_maps = _of(objects, "ConfigMap")
    for workload in _workloads(objects):
        name, spec = workload["metadata"]["name"], workload["spec"]
        pod = spec["template"]["spec"]
        volumes = {v["name"] for v in pod.get("volumes", [])}
        volumes |= {c["metadata"]["name"] for c in spec.get("volumeClaimTemplates", [])}
        for volume in pod.get("volumes", []):
            if "configMap" in volume:
                assert volume["configMap"]["name"] in config_maps, (name, volume)
        for container in _containers(pod):
            for mount in container.get("volumeMounts", []):
                assert mount["name"] in volumes, (name, mount)
            for source in container.get("envFrom", []):
                assert source["configMapRef"]["name"] in config_maps, name
            for variable in container.get("env", []):
                secret = variable.get("valueFrom", {}).get("secretKeyRef")
                if secret:
                    assert secret["name"] == "cartlytics-keys" and secret["key"] in SECRET_KEYS
            ports = {p["name"] for p in container.get("ports", [])}
            for probe in ("readinessProbe", "livenessProbe"):
                for handler in ("httpGet", "tcpSocket", "grpc"):
                    port = container.get(probe, {}).get(handler, {}).get("port")
                    assert port is None or isinstance(port, int) or port in ports, (name, probe)
