"""Third-party OpenAPI tools against a running server: the documents validate, and clients
generated from them (openapi-python-client) call the server with a token or a model's key."""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import msgspec
import pytest
from openapi_spec_validator import validate

from tests.e2e.test_deployments import Deployed, typed

pytestmark = pytest.mark.slow


def generate(spec: dict, folder: Path, package: str):
    """Write the document, generate a client package from it, import it."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{package}.json").write_bytes(msgspec.json.encode(spec))
    bin_dir = Path(sys.executable).parent
    made = subprocess.run(
        [
            str(bin_dir / "openapi-python-client"),
            "generate",
            "--path",
            f"{package}.json",
            "--meta",
            "none",
            "--output-path",
            package,
        ],
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=300,
        env={"PATH": f"{bin_dir}:/usr/bin:/bin", "HOME": str(folder)},
    )
    assert made.returncode == 0, made.stdout + made.stderr
    sys.path.insert(0, str(folder))
    try:
        return importlib.import_module(package)
    finally:
        sys.path.remove(str(folder))


def test_generated_clients_drive_the_server(offline_server, tmp_path):
    d = Deployed(offline_server().start(), tmp_path)
    key = d.model("add")
    d.deploy("add", d.build("add", {"predict.py": typed(1.0)}))

    management = d.c.get("/schema/openapi.json").json()
    validate(management)
    guarded = management["paths"]["/api/v1/models"]["get"]
    assert guarded["security"] == [{"bearer": []}]
    assert "security" not in management["paths"]["/api/v1/health"]["get"]
    assert management["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"

    mgmt = generate(management, tmp_path / "gen", "mgmt")
    listing = importlib.import_module("mgmt.api.models.api_v1_models_list_models")
    client = mgmt.AuthenticatedClient(base_url=d.srv.url, token=d.srv.token)
    answer = listing.sync_detailed(client=client)
    assert answer.status_code == 200
    assert [m["name"] for m in msgspec.json.decode(answer.content)["items"]] == ["add"]
    anonymous = mgmt.Client(base_url=d.srv.url)
    assert listing.sync_detailed(client=anonymous).status_code == 401

    # The model's own document: readable with the model's access key, naming the server.
    doc = d.c.get("/api/v1/models/add/openapi.json", headers={"Authorization": f"Bearer {key}"})
    assert doc.status_code == 200, doc.text
    spec = doc.json()
    validate(spec)
    assert spec["servers"][0]["url"] == d.srv.url
    other = d.model("other")
    refused = d.c.get(
        "/api/v1/models/add/openapi.json", headers={"Authorization": f"Bearer {other}"}
    )
    assert refused.status_code == 401

    model = generate(spec, tmp_path / "gen", "addclient")
    predict = importlib.import_module("addclient.api.default.predict")
    body_type = next(getattr(model.models, n) for n in dir(model.models) if n.endswith("Input"))
    called = predict.sync_detailed(
        client=model.AuthenticatedClient(base_url=spec["servers"][0]["url"], token=key),
        body=body_type(a=2.0),
    )
    assert called.status_code == 200 and msgspec.json.decode(called.content) == 3.0
