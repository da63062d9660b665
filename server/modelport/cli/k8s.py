"""`modelport k8s render`: Kubernetes manifests for several gateways on PostgreSQL + S3."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from modelport.cli.common import err_console


@click.group("k8s")
def k8s() -> None:
    """Kubernetes manifests for modelport (rendered here; applied with kubectl)."""


def _pairs(ctx: click.Context, param: click.Parameter, values: tuple[str, ...]) -> dict[str, str]:
    found = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{item!r}: expected KEY=VALUE", ctx=ctx, param=param)
        found[key] = value
    return found


@k8s.command("render")
@click.option("--image", required=True, help="Container image with modelport installed.")
@click.option(
    "--store-url",
    required=True,
    envvar="MODELPORT_STORE_URL",
    help="The shared artifact store: s3://bucket/prefix?endpoint=…",
)
@click.option("--name", default="modelport", show_default=True, help="Name of the resources.")
@click.option("--namespace", default="default", show_default=True)
@click.option("--gateways", default=2, show_default=True, type=int, help="Pods (servers).")
@click.option(
    "--secret",
    default="modelport",
    show_default=True,
    help="Secret holding MODELPORT_DATABASE_URL and the AWS_* keys (never rendered).",
)
@click.option("--cpu", default="2", show_default=True, help="CPU a pod requests.")
@click.option("--memory", default="4Gi", show_default=True, help="Memory a pod requests (limit).")
@click.option(
    "--set",
    "settings",
    multiple=True,
    callback=_pairs,
    metavar="KEY=VALUE",
    help="Another server setting for the ConfigMap (MODELPORT_BUILD_WORKERS=4); repeatable.",
)
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), default=None)
def render(
    image: str,
    store_url: str,
    name: str,
    namespace: str,
    gateways: int,
    secret: str,
    cpu: str,
    memory: str,
    settings: dict[str, str],
    output: Path | None,
) -> None:
    """A ConfigMap, a Deployment of GATEWAYS servers and a Service, as YAML (stdout or -o)."""
    from modelport.k8s import K8sOptions, check, render, to_yaml

    opts = K8sOptions(
        image=image,
        store_url=store_url,
        name=name,
        namespace=namespace,
        gateways=gateways,
        secret=secret,
        cpu=cpu,
        memory=memory,
        settings=settings,
    )
    _refuse(check(opts))
    _write(to_yaml(render(opts), opts), output, f"ConfigMap, Deployment ({gateways}), Service")


@k8s.command("ray")
@click.option("--image", required=True, help="Container image with modelport[ray] installed.")
@click.option("--name", default="modelport-ray", show_default=True, help="The RayCluster's name.")
@click.option("--namespace", default="default", show_default=True)
@click.option("--workers", default=2, show_default=True, type=int, help="Worker pods (nodes).")
@click.option("--cpu", default="4", show_default=True, help="CPU of a worker pod.")
@click.option("--memory", default="16Gi", show_default=True, help="Memory of a worker pod.")
@click.option("--gpus", default=0, show_default=True, type=int, help="GPUs of a worker pod.")
@click.option(
    "--secret",
    default="modelport",
    show_default=True,
    help="Secret holding the AWS_* keys of the store (never rendered).",
)
@click.option("--ray-version", default="2.60.0", show_default=True, help="The pods' Ray.")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), default=None)
def ray(
    image: str,
    name: str,
    namespace: str,
    workers: int,
    cpu: str,
    memory: str,
    gpus: int,
    secret: str,
    ray_version: str,
    output: Path | None,
) -> None:
    """A KubeRay RayCluster whose nodes run the gateways' replicas, as YAML (stdout or -o)."""
    from modelport.k8s import RayOptions, check_ray, ray_address, ray_to_yaml, render_ray

    opts = RayOptions(
        image=image,
        name=name,
        namespace=namespace,
        workers=workers,
        cpu=cpu,
        memory=memory,
        gpus=gpus,
        secret=secret,
        ray_version=ray_version,
    )
    _refuse(check_ray(opts))
    _write(
        ray_to_yaml(render_ray(opts), opts),
        output,
        f"RayCluster {name} ({workers} workers); gateways: "
        f"--set MODELPORT_REPLICAS={ray_address(opts)}",
    )


def _refuse(problems: list[str]) -> None:
    """Exit 2 naming each problem of the options, rendering nothing; return when there is none."""
    if problems:
        for problem in problems:
            err_console.print(f"[red]error:[/] {problem}")
        sys.exit(2)


def _write(text: str, output: Path | None, what: str) -> None:
    """The manifests on stdout, or into ``output`` with a line saying what it holds."""
    if output is None:
        click.echo(text, nl=False)
    else:
        output.write_text(text)
        err_console.print(f"Wrote {output}: {what}")


COMMANDS = [k8s]
