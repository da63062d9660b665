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
