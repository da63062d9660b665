"""A deployment's settings are spelled once (DeploymentSettings): the API's request, what serving
runs (GroupSpec) and the deployment the API shows take its names and defaults."""

from __future__ import annotations

import msgspec
from modelport.api.deployments import DeploymentCreate
from modelport.registry.records import DEPLOYMENT_DEFAULTS, SETTING_NAMES, Deployment
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
