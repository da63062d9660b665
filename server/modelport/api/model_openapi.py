"""GET /api/v1/models/{name}/openapi.json: the prediction endpoint's OpenAPI, from the signature."""

from __future__ import annotations

from typing import Any

import msgspec
from litestar import Request, get
from litestar.params import FromPath

from modelport import __version__
from modelport.api.common import DbDep
from modelport.errors import ModelNotDeployed
from modelport.registry import builds as build_rows
from modelport.registry import deployments as deployment_rows
from modelport.registry import models as model_rows
from modelport.registry.rows import BuildRow

ERROR = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["code", "message"],
            "properties": {
                "code": {"type": "string"},
                "message": {"type": "string"},
                "field": {"type": "string"},
            },
        }
    },
}
ERRORS = {
    "400": "request.malformed",
    "401": "auth.missing / auth.invalid",
    "403": "auth.denied",
    "404": "model.not_found / model.not_deployed",
    "413": "request.too_large",
    "422": "request.invalid (field names the first bad value)",
    "429": "model.busy",
    "500": "model.error",
    "502": "model.crashed",
    "503": "model.unavailable",
    "504": "model.timeout",
}


def _lift(schema: dict | None, components: dict) -> dict:
    """msgspec's `$defs` become components; its `#/$defs/X` refs point there."""
    if not schema:
        return {}
    schema = dict(schema)
    components.update(schema.pop("$defs", {}))
    text = msgspec.json.encode(schema).decode().replace("#/$defs/", "#/components/schemas/")
    return msgspec.json.decode(text)


def document(name: str, build: BuildRow, server_url: str) -> dict[str, Any]:
    components: dict = {}
    request_schema = _lift(build.input_schema or {}, components)
    response_schema = _lift(build.output_schema or {}, components)
    components = {k: _lift(v, {}) for k, v in components.items()}
    example = build.example_input
    body = {"schema": request_schema} | ({"example": example} if example is not None else {})
    responses: dict[str, Any] = {
        "200": {
            "description": "The function's return value",
            "headers": {
                h: {"schema": {"type": "string"}}
                for h in ("X-Model-Build", "X-Model-Digest", "X-Replica-Id", "X-Request-Id")
            },
            "content": {
                "application/json": {"schema": response_schema},
                "application/msgpack": {"schema": response_schema},
            },
        }
    }
    for status, codes in ERRORS.items():
        responses[status] = {
            "description": codes,
            "content": {"application/json": {"schema": ERROR}},
        }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": f"{name} (build #{build.number})",
            "version": str(build.number),
            "description": f"Served by modelport {__version__}; digest {build.digest}.",
        },
        "servers": [{"url": server_url, "description": "The server this document came from"}],
        "paths": {
            f"/models/{name}/predict": {
                "post": {
                    "operationId": "predict",
                    "summary": f"Call {build.entrypoint}",
                    "security": [{"bearer": []}],
                    "requestBody": {
                        "required": True,
                        "content": {"application/json": body, "application/msgpack": body},
                    },
                    "responses": responses,
                }
            }
        },
        "components": {
            "schemas": components,
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "The model's access key, or a predict/deployer/admin token",
                }
            },
        },
    }


@get(
    "/api/v1/models/{name:str}/openapi.json",
    opt={"perm": "read", "model_key": True},
    tags=["models"],
)
async def model_openapi(request: Request, db: DbDep, name: FromPath[str]) -> dict[str, Any]:
    """The OpenAPI document of the model's prediction endpoint, for the build it serves; a
    viewer's token or the model's own access key may read it."""
    model = await model_rows.row(db, name)
    current = await deployment_rows.current(db, model.id)
    if current is None:
        raise ModelNotDeployed(f"Model '{name}' has no deployment.")
    build = await build_rows.by_id(db, current.build_id)
    return document(name, build, str(request.base_url).rstrip("/"))
