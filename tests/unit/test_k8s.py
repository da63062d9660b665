"""`modelport k8s render`: the manifests it writes are valid Kubernetes resources (checked offline
against the API's schemas, strictly: no unknown field), carry the settings asked for, and never
hold a secret. There is no Kubernetes API server here: nothing is applied."""

from __future__ import annotations

import kubernetes_validate
import pytest
import yaml
from click.testing import CliRunner
from modelport.cli import main

STORE = "s3://models/modelport?endpoint=http://s3:7480"
# the oldest Kubernetes still commonly run, and the newest the validator knows
VERSIONS = ["1.30.0", kubernetes_validate.latest_version()]


def run(*args: str, env: dict[str, str] | None = None):
    return CliRunner().invoke(main, ["k8s", "render", *args], env=env)


def rendered(*args: str) -> list[dict]:
    result = run("--image", "registry.example/modelport:0.1.0", "--store-url", STORE, *args)
    assert result.exit_code == 0, result.output
    return [doc for doc in yaml.safe_load_all(result.output) if doc is not None]


@pytest.mark.parametrize("version", VERSIONS)
def test_the_manifests_are_valid_kubernetes_resources(version):
    docs = rendered("--gateways", "3", "--set", "MODELPORT_BUILD_WORKERS=4")
    assert [d["kind"] for d in docs] == ["ConfigMap", "Deployment", "Service"]
    for doc in docs:
        kubernetes_validate.validate(doc, version, strict=True)


def test_they_say_what_was_asked():
    config, deployment, service = rendered(
        "--name", "mp", "--namespace", "ml", "--gateways", "3", "--cpu", "1", "--memory", "2Gi",
        "--set", "MODELPORT_BUILD_WORKERS=4",
    )  # fmt: skip
    assert {d["metadata"]["namespace"] for d in (config, deployment, service)} == {"ml"}
    assert config["data"] == {
        "MODELPORT_HOME": "/var/lib/modelport",
        "MODELPORT_STORE_URL": STORE,
        "MODELPORT_SECRET_KEY_FILE": "/etc/modelport/key/secret.key",
        "MODELPORT_BUILD_WORKERS": "4",
    }
    spec = deployment["spec"]
    assert spec["replicas"] == 3
    (pod,) = spec["template"]["spec"]["containers"]
    # each pod binds its own address (not loopback, not every interface) and names itself
    assert pod["command"] == ["modelport", "serve", "--host", "$(POD_IP)", "--port", "8000"]
    env = {e["name"]: e["valueFrom"] for e in pod["env"]}
    assert env["POD_IP"] == {"fieldRef": {"fieldPath": "status.podIP"}}
    assert env["MODELPORT_NODE"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert env["MODELPORT_DATABASE_URL"]["secretKeyRef"]["name"] == "modelport"
    assert pod["resources"]["requests"] == {"cpu": "1", "memory": "2Gi"}
    assert pod["readinessProbe"]["httpGet"]["path"] == "/api/v1/health"
    assert service["spec"]["selector"] == spec["selector"]["matchLabels"]
    assert spec["template"]["metadata"]["labels"] == spec["selector"]["matchLabels"]
    # one sealing key for every gateway: the Secret's secret.key, read-only where the setting says
    mounts = {m["name"]: m for m in pod["volumeMounts"]}
    assert mounts["key"] == {"name": "key", "mountPath": "/etc/modelport/key", "readOnly": True}
    volumes = {v["name"]: v for v in spec["template"]["spec"]["volumes"]}
    assert volumes["key"]["secret"]["secretName"] == "modelport"
    assert volumes["key"]["secret"]["items"] == [{"key": "secret.key", "path": "secret.key"}]


def test_no_secret_is_rendered_only_named(monkeypatch):
    monkeypatch.setenv("MODELPORT_DATABASE_URL", "postgresql://mp:hunter2@db/mp")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s3cr3t-key")
    result = run("--image", "img:1", "--store-url", STORE, "--secret", "mp-secrets")
    assert result.exit_code == 0, result.output
    assert "hunter2" not in result.output and "s3cr3t-key" not in result.output
    # the head comment says how to make the Secret the pods read
    assert "kubectl -n default create secret generic mp-secrets" in result.output
    assert "--from-literal=MODELPORT_DATABASE_URL=" in result.output
    assert "--from-file=secret.key=./secret.key" in result.output


def test_written_to_a_file(tmp_path):
    out = tmp_path / "modelport.yaml"
    result = run("--image", "img:1", "--store-url", STORE, "-o", str(out))
    assert result.exit_code == 0, result.output
    assert "Wrote" in result.output
    kinds = [d["kind"] for d in yaml.safe_load_all(out.read_text()) if d]
    assert kinds == ["ConfigMap", "Deployment", "Service"]


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--store-url", "/var/lib/store"], "--store-url must be an s3:// URL"),
        (["--store-url", STORE, "--name", "Model_Port"], "--name 'Model_Port' is not a DNS label"),
        (["--store-url", STORE, "--gateways", "0"], "--gateways must be at least 1"),
        (["--store-url", STORE, "--set", "MODELPORT_HOME=/x"], "set by the manifests themselves"),
        (["--store-url", STORE, "--set", "lower=1"], "not an environment variable name"),
        (["--store-url", STORE, "--set", "NOEQUALS"], "expected KEY=VALUE"),
    ],
)
def test_bad_options_are_refused_with_a_reason(args, says):
    result = run("--image", "img:1", *args)
    assert result.exit_code == 2
    assert says in " ".join(result.output.split())
    assert "apiVersion" not in result.output


def test_image_and_store_are_required():
    result = run("--store-url", STORE)
    assert result.exit_code == 2 and "--image" in result.output
