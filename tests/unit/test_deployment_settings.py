"""A deployment's settings are spelled once (DeploymentSettings): the API's request, what serving
runs (GroupSpec), the row the registry stores and the deployment the API shows take its names
and defaults."""

from __future__ import annotations

import msgspec
from modelport.api.deployments import DeploymentCreate
from modelport.registry.deployments import settings_of, to_deployment
from modelport.registry.records import (
    DEPLOYMENT_DEFAULTS,
    SETTING_NAMES,
    Deployment,
    DeploymentSettings,
)
from modelport.registry.rows import DeploymentRow, NamedDeploymentRow, load
from modelport.registry.sealed import Sealer
from modelport.serving.config import GroupSpec


def test_the_request_takes_every_setting_and_only_those_besides_its_options():
    options = {"build", "keep_current", "allow_breaking"}
    candidate = {
        "canary_percent",
        "shadow",
        "sticky_header",
        "guard",
    }  # a candidate's, not settings
    asked = set(DeploymentCreate.__struct_fields__) - options - candidate
    assert asked == set(SETTING_NAMES)


def test_the_request_says_each_default_as_the_settings_have_it():
    schema = msgspec.json.schema(DeploymentCreate)
    props = schema["$defs"]["DeploymentCreate"]["properties"]
    assert props["replicas"]["description"].startswith("Default 1,")
    assert props["timeout_s"]["description"].startswith("Default 30,")
    assert props["memory_mb"]["anyOf"][0]["description"].startswith("Default none,")
    assert props["network"]["description"].startswith("Default true,")
    assert props["placement"]["description"].startswith("Default spread,")
    assert props["env"]["description"].startswith("Default {},")


def test_serving_runs_the_settings_with_their_defaults():
    spec = GroupSpec(model="m", build=1, python="py", project="p", entry="e.py:f")
    assert {n: getattr(spec, n) for n in SETTING_NAMES} == msgspec.structs.asdict(
        DEPLOYMENT_DEFAULTS
    )


def test_the_deployment_shown_has_every_setting_but_env_whose_names_it_shows():
    shown = set(Deployment.__struct_fields__)
    assert set(SETTING_NAMES) - shown == {"env"} and "env_keys" in shown


STORED = {
    "id": 7,
    "model_id": 3,
    "build_id": 9,
    "build_number": 2,
    "status": "deployed",
    "replicas": 2,
    "memory_mb": None,
    "timeout_s": 30,  # a REAL column may come back whole
    "max_concurrency": 1,
    "queue_timeout_s": 30.0,
    "max_body_mb": 5.0,
    "env": '{"A": "1"}',
    "env_sealed": 0,  # SQLite's boolean
    "capture_percent": 0.0,
    "capture_max_bytes": 65536,
    "network": 1,
    "boot_timeout_s": 300.0,
    "cpus": 1.0,
    "gpus": 0,
    "resources": '{"tpu": 1}',
    "placement": "pack",
    "require_replay": 0,
    "created_by": "me",
    "created_at": "t0",
    "finished_at": None,
    "reason": None,
}


def test_a_deployment_row_stores_every_setting():
    assert set(SETTING_NAMES) <= set(DeploymentRow.__struct_fields__)


def test_a_deployment_row_loads_its_columns_and_gives_its_settings_in_clear():
    row = load(DeploymentRow, STORED)
    assert row.network is True and row.env_sealed is False and row.timeout_s == 30.0
    assert row.resources == {"tpu": 1.0} and row.placement == "pack"
    settings = settings_of(row, Sealer(bytes(32)))
    assert isinstance(settings, DeploymentSettings) and settings.env == {"A": "1"}
    assert settings.replicas == 2 and settings.placement == "pack"
    sealer = Sealer(bytes(32))
    sealed = STORED | {"env": msgspec.json.encode(sealer.seal_env({"A": "1"})), "env_sealed": 1}
    assert settings_of(load(DeploymentRow, sealed), sealer).env == {"A": "1"}
    shown = to_deployment(row, "m")
    assert shown.env_keys == ["A"] and shown.replicas == 2 and shown.placement == "pack"


def test_a_joined_deployment_row_has_its_models_name():
    assert load(NamedDeploymentRow, STORED | {"model": "m"}).model == "m"
