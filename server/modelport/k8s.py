"""Kubernetes manifests for several modelport gateways sharing one registry and one store:
a ConfigMap (the settings every pod shares), a Deployment (the gateways) and a Service in front.

The registry's URL, the S3 credentials and the sealing key are secrets: the manifests only name
the Secret that holds them (`secret_hint` says how to make it), so nothing secret is ever
rendered. Every gateway of one registry must open the deployments' sealed env values with the
same key, so the key is a file of that Secret mounted read-only in each pod and named by
MODELPORT_SECRET_KEY_FILE (a server whose key does not open the registry's refuses to start).
Each pod binds its own IP and names itself by its pod name (MODELPORT_NODE). A pod's data dir is an
emptyDir: the registry and the store are elsewhere (PostgreSQL, S3), so what it holds (the
read-through cache, environments, logs) is rebuilt on a new pod.
"""

from __future__ import annotations

import re
from typing import Any

import msgspec
import yaml

PORT = 8000
DATA_DIR = "/var/lib/modelport"
# The Secret's keys, each the environment variable it becomes in the pod.
SECRET_KEYS = ("MODELPORT_DATABASE_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
# The Secret's file holding the sealing key (32 bytes), and where each pod reads it.
KEY_FILE = "secret.key"
KEY_DIR = "/etc/modelport/key"
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_ENV_NAME = re.compile(r"^[A-Z_][A-Z0-9_]*$")
# Set by the manifests themselves: --set may not replace them.
_OWN = {
    "MODELPORT_HOME",
    "MODELPORT_STORE_URL",
    "MODELPORT_NODE",
    "MODELPORT_SECRET_KEY_FILE",
    "POD_IP",
    *SECRET_KEYS,
}


class K8sOptions(msgspec.Struct, frozen=True, kw_only=True):
    image: str
    store_url: str
    name: str = "modelport"
    namespace: str = "default"
    gateways: int = 2
    secret: str = "modelport"
    cpu: str = "2"
    memory: str = "4Gi"
    settings: dict[str, str] = {}


def check(opts: K8sOptions) -> list[str]:
    """What is wrong with the options, each a sentence; empty when they render."""
    problems = []
    if not opts.image.strip():
        problems.append("--image is empty: name the container image that has modelport installed")
    if not opts.store_url.startswith("s3://"):
        problems.append(
            "--store-url must be an s3:// URL: several gateways need a shared artifact store"
        )
    labels = (("--name", opts.name), ("--namespace", opts.namespace), ("--secret", opts.secret))
    for flag, value in labels:
        if not _DNS_LABEL.match(value):
            problems.append(f"{flag} {value!r} is not a DNS label (a-z, 0-9, '-', ≤ 63)")
    if opts.gateways < 1:
        problems.append("--gateways must be at least 1")
    for key in opts.settings:
        if not _ENV_NAME.match(key):
            problems.append(f"--set {key}: not an environment variable name")
        elif key in _OWN:
            problems.append(f"--set {key}: set by the manifests themselves")
    return problems


def render(opts: K8sOptions) -> list[dict[str, Any]]:
    """The three resources, in the order `kubectl apply` wants them."""
    labels = {"app.kubernetes.io/name": "modelport", "app.kubernetes.io/instance": opts.name}
    meta = {"name": opts.name, "namespace": opts.namespace, "labels": labels}
    config = {
        "MODELPORT_HOME": DATA_DIR,
        "MODELPORT_STORE_URL": opts.store_url,
        "MODELPORT_SECRET_KEY_FILE": f"{KEY_DIR}/{KEY_FILE}",
        **dict(sorted(opts.settings.items())),
    }
    env: list[dict[str, Any]] = [
        {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
        {"name": "MODELPORT_NODE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
    ]
    optional = {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}  # an IAM role may stand for them
    env += [
        {
            "name": key,
            "valueFrom": {
                "secretKeyRef": {"name": opts.secret, "key": key, "optional": key in optional}
            },
        }
        for key in SECRET_KEYS
    ]
    probe = {"httpGet": {"path": "/api/v1/health", "port": "http"}, "periodSeconds": 10}
    container = {
        "name": "modelport",
        "image": opts.image,
        "command": ["modelport", "serve", "--host", "$(POD_IP)", "--port", str(PORT)],
        "ports": [{"name": "http", "containerPort": PORT, "protocol": "TCP"}],
        "envFrom": [{"configMapRef": {"name": opts.name}}],
        "env": env,
        "readinessProbe": {**probe, "failureThreshold": 3},
        "livenessProbe": {**probe, "initialDelaySeconds": 30, "failureThreshold": 6},
        "resources": {
            "requests": {"cpu": opts.cpu, "memory": opts.memory},
            "limits": {"memory": opts.memory},
        },
        "volumeMounts": [
            {"name": "data", "mountPath": DATA_DIR},
            {"name": "key", "mountPath": KEY_DIR, "readOnly": True},
        ],
    }
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": meta,
        "spec": {
            "replicas": opts.gateways,
            "selector": {"matchLabels": labels},
            # one gateway at a time, never fewer serving than asked for
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0}},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    # a replica's drain (SIGTERM → finish what is in flight) before the kill
                    "terminationGracePeriodSeconds": 60,
                    "containers": [container],
                    "volumes": [
                        {"name": "data", "emptyDir": {}},
                        {
                            "name": "key",
                            "secret": {
                                "secretName": opts.secret,
                                "items": [{"key": KEY_FILE, "path": KEY_FILE}],
                                "defaultMode": 0o400,
                            },
                        },
                    ],
                },
            },
        },
    }
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": meta,
        "spec": {
            "type": "ClusterIP",
            "selector": labels,
            "ports": [{"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"}],
        },
    }
    configmap = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta, "data": config}
    return [configmap, deployment, service]


class _Dumper(yaml.SafeDumper):
    """Plain YAML: no &anchors/*aliases for the dicts the resources share (kubectl reads them,
    people reading the file would not)."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def to_yaml(resources: list[dict[str, Any]], opts: K8sOptions) -> str:
    head = "".join(f"# {line}\n" for line in secret_hint(opts).splitlines())
    docs = [yaml.dump(r, Dumper=_Dumper, sort_keys=False, width=100) for r in resources]
    return head + "---\n" + "---\n".join(docs)


def secret_hint(opts: K8sOptions) -> str:
    """How to make the Secret the manifests name (values left for the user to fill in)."""
    literals = " ".join(f"--from-literal={k}=…" for k in SECRET_KEYS)
    return (
        f"modelport gateways ({opts.gateways}) sharing a registry and {opts.store_url}.\n"
        f"First make the Secret they read, in namespace {opts.namespace}:\n"
        f"  kubectl -n {opts.namespace} create secret generic {opts.secret} {literals} \\\n"
        f"    --from-file={KEY_FILE}=./{KEY_FILE}\n"
        "(the AWS_* keys may be left out where the pods get S3 credentials otherwise).\n"
        f"./{KEY_FILE} is the key that seals deployments' env values, the same for every\n"
        "gateway: the secret.key of the data dir the registry came from (modelport migrate),\n"
        f"or for a new registry 32 random bytes: head -c 32 /dev/urandom > {KEY_FILE}"
    )


# -- a Ray cluster for the gateways' replicas (KubeRay) ----------------------------------------

RAY_GCS_PORT = 6379
# Ray's node health checks as docs/scale-out.md advises (a lost node noticed in ~3 s, a partitioned
# one in ~5.5 s, not ~65 s), as Ray reads them from the environment (RAY_<setting>): a
# --system-config JSON would not survive KubeRay's shell command line.
RAY_HEALTH_ENV = {
    "RAY_health_check_initial_delay_ms": "1000",
    "RAY_health_check_period_ms": "1000",
    "RAY_health_check_timeout_ms": "1000",
    "RAY_health_check_failure_threshold": "3",
}
NODE_DIR = "/var/lib/modelport-node"


class RayOptions(msgspec.Struct, frozen=True, kw_only=True):
    image: str
    name: str = "modelport-ray"
    namespace: str = "default"
    workers: int = 2
    cpu: str = "4"
    memory: str = "16Gi"
    gpus: int = 0
    secret: str = "modelport"
    ray_version: str = "2.60.0"


def check_ray(opts: RayOptions) -> list[str]:
    """What is wrong with the options, each a sentence; empty when they render."""
    problems = []
    if not opts.image.strip():
        problems.append("--image is empty: name an image with modelport[ray] installed")
    for flag, value in (("--name", opts.name), ("--namespace", opts.namespace)):
        if not _DNS_LABEL.match(value) or len(value) > 50:  # KubeRay appends -head-svc and more
            problems.append(f"{flag} {value!r} is not a DNS label of at most 50 characters")
    if not _DNS_LABEL.match(opts.secret):
        problems.append(f"--secret {opts.secret!r} is not a DNS label (a-z, 0-9, '-', ≤ 63)")
    if opts.workers < 1:
        problems.append("--workers must be at least 1 (the head runs no replica)")
    if opts.gpus < 0:
        problems.append("--gpus must be 0 or more")
    if not re.fullmatch(r"\d+\.\d+\.\d+", opts.ray_version):
        problems.append(f"--ray-version {opts.ray_version!r} is not a version such as 2.60.0")
    return problems


def ray_address(opts: RayOptions) -> str:
    """MODELPORT_REPLICAS for the gateways: the head service KubeRay makes, its GCS port."""
    return f"ray://{opts.name}-head-svc.{opts.namespace}.svc:{RAY_GCS_PORT}"


def render_ray(opts: RayOptions) -> dict[str, Any]:
    """A KubeRay RayCluster (ray.io/v1): a head that places nothing itself (num-cpus 0) and one
    worker group of ``workers`` pods, each node's builds under an emptyDir, the store's S3 keys
    from the gateways' Secret (optional: an IAM role may stand for them)."""
    labels = {"app.kubernetes.io/name": "modelport-ray", "app.kubernetes.io/instance": opts.name}
    keys = [
        {
            "name": key,
            "valueFrom": {"secretKeyRef": {"name": opts.secret, "key": key, "optional": True}},
        }
        for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
    ]
    node_env = [{"name": "MODELPORT_NODE_DIR", "value": NODE_DIR}, *keys]

    def pod(container: dict[str, Any]) -> dict[str, Any]:
        return {
            "metadata": {"labels": labels},
            "spec": {
                "containers": [
                    {
                        "name": container.pop("name"),
                        "image": opts.image,
                        **container,
                        "volumeMounts": [{"name": "node", "mountPath": NODE_DIR}],
                    }
                ],
                "volumes": [{"name": "node", "emptyDir": {}}],
            },
        }

    limits: dict[str, Any] = {"cpu": opts.cpu, "memory": opts.memory}
    if opts.gpus:
        limits["nvidia.com/gpu"] = str(opts.gpus)
    head = pod(
        {
            "name": "ray-head",
            "env": [*({"name": k, "value": v} for k, v in RAY_HEALTH_ENV.items()), *node_env],
            "ports": [
                {"name": "gcs-server", "containerPort": RAY_GCS_PORT, "protocol": "TCP"},
                {"name": "dashboard", "containerPort": 8265, "protocol": "TCP"},
                {"name": "client", "containerPort": 10001, "protocol": "TCP"},
            ],
            "resources": {
                "requests": {"cpu": "1", "memory": "2Gi"},
                "limits": {"cpu": "1", "memory": "2Gi"},
            },
        }
    )
    worker = pod(
        {
            "name": "ray-worker",
            "env": node_env,
            "resources": {"requests": dict(limits), "limits": limits},
        }
    )
    return {
        "apiVersion": "ray.io/v1",
        "kind": "RayCluster",
        "metadata": {"name": opts.name, "namespace": opts.namespace, "labels": labels},
        "spec": {
            "rayVersion": opts.ray_version,
            "headGroupSpec": {
                "serviceType": "ClusterIP",
                # the head keeps the cluster's state; replicas go to the workers
                "rayStartParams": {"num-cpus": "0", "dashboard-host": "0.0.0.0"},
                "template": head,
            },
            "workerGroupSpecs": [
                {
                    "groupName": "replicas",
                    "replicas": opts.workers,
                    "minReplicas": opts.workers,
                    "maxReplicas": opts.workers,
                    "rayStartParams": {},
                    "template": worker,
                }
            ],
        },
    }


def ray_to_yaml(cluster: dict[str, Any], opts: RayOptions) -> str:
    head = (
        f"A Ray cluster ({opts.workers} worker pods) for modelport's replicas, run by KubeRay's\n"
        "operator (installed first: its CRD ray.io/v1 RayCluster). Every pod's image has\n"
        "modelport[ray] installed; each node reads builds from the gateways' S3 store with the\n"
        f"AWS_* keys of Secret {opts.secret}. Point the gateways at its head:\n"
        f"  modelport k8s render … --set MODELPORT_REPLICAS={ray_address(opts)}"
    )
    text = "".join(f"# {line}\n" for line in head.splitlines())
    return text + "---\n" + yaml.dump(cluster, Dumper=_Dumper, sort_keys=False, width=100)
