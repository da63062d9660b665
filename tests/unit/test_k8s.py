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


# -- modelport k8s ray: a KubeRay RayCluster ------------------------------------------------------

# The fields of KubeRay's ray.io/v1 RayCluster this renders, as its CRD (ray-operator 1.x) has
# them. The CRD's schema is not available offline here (no package ships it), so its own fields
# are checked against this list; the pod templates, core/v1 PodTemplateSpecs, are validated
# strictly against Kubernetes' own schemas.
RAYCLUSTER_FIELDS = {
    "": {"apiVersion", "kind", "metadata", "spec"},
    "spec": {"rayVersion", "headGroupSpec", "workerGroupSpecs", "enableInTreeAutoscaling"},
    "head": {"serviceType", "rayStartParams", "template", "headService", "enableIngress"},
    "worker": {
        "groupName", "replicas", "minReplicas", "maxReplicas", "rayStartParams", "template",
        "numOfHosts", "suspend", "scaleStrategy",
    },
}  # fmt: skip


def ray_rendered(*args: str) -> tuple[str, dict]:
    result = CliRunner().invoke(
        main, ["k8s", "ray", "--image", "registry.example/modelport:0.1.0", *args]
    )
    assert result.exit_code == 0, result.output
    (cluster,) = [doc for doc in yaml.safe_load_all(result.output) if doc is not None]
    return result.output, cluster


@pytest.mark.parametrize("version", VERSIONS)
def test_the_raycluster_is_kuberay_s_shape_with_valid_pod_templates(version):
    _, cluster = ray_rendered("--workers", "3", "--gpus", "1")
    assert (cluster["apiVersion"], cluster["kind"]) == ("ray.io/v1", "RayCluster")
    assert set(cluster) <= RAYCLUSTER_FIELDS[""]
    spec = cluster["spec"]
    assert set(spec) <= RAYCLUSTER_FIELDS["spec"]
    assert set(spec["headGroupSpec"]) <= RAYCLUSTER_FIELDS["head"]
    groups = [spec["headGroupSpec"], *spec["workerGroupSpecs"]]
    for group in spec["workerGroupSpecs"]:
        assert set(group) <= RAYCLUSTER_FIELDS["worker"]
        assert all(isinstance(group[k], int) for k in ("replicas", "minReplicas", "maxReplicas"))
    for group in groups:
        # KubeRay's rayStartParams: a map of strings (each becomes --key=value)
        assert all(isinstance(v, str) for v in group["rayStartParams"].values())
        template = {
            "apiVersion": "v1",
            "kind": "PodTemplate",
            "metadata": {"name": "check", "namespace": "default"},
            "template": group["template"],
        }
        kubernetes_validate.validate(template, version, strict=True)


def test_the_raycluster_says_what_was_asked_and_names_no_secret():
    text, cluster = ray_rendered(
        "--name", "rc", "--namespace", "ml", "--workers", "3", "--cpu", "8", "--memory", "32Gi",
        "--gpus", "2", "--secret", "mp-keys",
    )  # fmt: skip
    assert cluster["metadata"]["name"] == "rc" and cluster["metadata"]["namespace"] == "ml"
    spec = cluster["spec"]
    assert spec["rayVersion"] == "2.60.0"
    head = spec["headGroupSpec"]
    assert head["rayStartParams"]["num-cpus"] == "0"  # replicas go to the workers
    (group,) = spec["workerGroupSpecs"]
    assert (group["replicas"], group["minReplicas"], group["maxReplicas"]) == (3, 3, 3)
    (worker,) = group["template"]["spec"]["containers"]
    assert worker["resources"]["limits"] == {"cpu": "8", "memory": "32Gi", "nvidia.com/gpu": "2"}
    # Ray's tuned node health checks (docs/scale-out.md), read by Ray from the environment
    (head_pod,) = head["template"]["spec"]["containers"]
    env = {e["name"]: e for e in head_pod["env"]}
    assert env["RAY_health_check_period_ms"]["value"] == "1000"
    assert env["RAY_health_check_failure_threshold"]["value"] == "3"
    # every node keeps its builds in an emptyDir and reads the store with the Secret's keys
    for pod in (head_pod, worker):
        names = {e["name"]: e for e in pod["env"]}
        assert names["MODELPORT_NODE_DIR"]["value"] == "/var/lib/modelport-node"
        ref = names["AWS_SECRET_ACCESS_KEY"]["valueFrom"]["secretKeyRef"]
        assert ref == {"name": "mp-keys", "key": "AWS_SECRET_ACCESS_KEY", "optional": True}
    # the head comment says how the gateways reach it
    assert "--set MODELPORT_REPLICAS=ray://rc-head-svc.ml.svc:6379" in text


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--workers", "0"], "--workers must be at least 1"),
        (["--name", "Ray_Cluster"], "--name 'Ray_Cluster' is not a DNS label"),
        (["--gpus", "-1"], "--gpus must be 0 or more"),
        (["--ray-version", "latest"], "--ray-version 'latest' is not a version"),
    ],
)
def test_bad_raycluster_options_are_refused_with_a_reason(args, says):
    result = CliRunner().invoke(main, ["k8s", "ray", "--image", "img:1", *args])
    assert result.exit_code == 2
    assert says in " ".join(result.output.split())
    assert "apiVersion" not in result.output
