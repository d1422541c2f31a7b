"""deploy/k8s: the manifests are valid Kubernetes objects and agree with the code they deploy.

No cluster runs here, so these checks are what can be held without one: every object against
the Kubernetes API schemas (kubernetes-validate, strict: an unknown field is an error), and the
manifests against the code: run targets, setting names and values, Envoy's upstreams, ports,
probes, the generated ConfigMap of Envoy's configuration and descriptor set.
"""

from __future__ import annotations

import base64
import importlib.util
import sys
from collections.abc import Iterator
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
