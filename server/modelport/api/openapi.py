"""What the route table tells clients: every route's error answers in the OpenAPI document, in
our shape, Structs as they are on the wire, the whole `Allow` list on OPTIONS, and the fields of
the streamed multipart uploads."""

from __future__ import annotations

from pathlib import Path

import msgspec
from litestar import Litestar
from litestar._openapi.plugin import OpenAPIPlugin
from litestar._openapi.schema_generation.plugins import StructSchemaPlugin
from litestar.openapi.datastructures import ResponseSpec
from litestar.openapi.plugins import SwaggerRenderPlugin
from litestar.openapi.spec import (
    Components,
    OpenAPIMediaType,
    OpenAPIResponse,
    OpenAPIType,
    Reference,
    RequestBody,
    Schema,
    SecurityScheme,
)
from litestar.routes import HTTPRoute

from modelport.builder.service import ENTRY, PYTHON
from modelport.errors import ErrorEnvelope

_EVERY = {
    400: "`request.malformed`: the body or a parameter cannot be read",
    404: "`*.not_found`: no such model, build, deployment, token, …",
    422: "`request.invalid`: the request does not match what this route accepts; `field` names "
    "the first bad value",
    500: "`internal`, `store.corrupt`, `store.missing`",
}
_GUARDED = {
    401: "`auth.missing` / `auth.invalid`: no token, or one unknown, expired or revoked",
    403: "`auth.denied`: this token's role may not do this",
    409: "`model.exists`, `model.active`, `build.not_ready`, …: the state does not allow it",
}
_WITH_BODY = {413: "`request.too_large`: the body is over the limit"}

BEARER = "bearer"
COMPONENTS = Components(
    security_schemes={
        BEARER: SecurityScheme(
            type="http",
            scheme="bearer",
            description="A token's secret (`mp_…`) from `modelport token create` or the data "
            "dir's admin.token; for a model's own routes also its access key (`mp_key_…`).",
        )
    }
)
_ASSETS = Path(__file__).resolve().parent.parent / "static" / "assets"


def docs_page() -> SwaggerRenderPlugin:
    """Swagger UI at /schema from the copy the web UI's build put in static/assets (so the page
    works offline); Litestar's CDN links only when the web UI is not built."""
    found = sorted(_ASSETS.glob("swagger-ui-*-bundle.js"))
    if not found:
        return SwaggerRenderPlugin()
    prefix = "/assets/" + found[-1].name.removesuffix("-bundle.js")
    return SwaggerRenderPlugin(
        js_url=f"{prefix}-bundle.js",
        css_url=f"{prefix}-ui.css",
        standalone_preset_js_url=f"{prefix}-preset.js",
        favicon="<link rel='icon' href='/favicon.svg'>",
    )


class StructSchema(StructSchemaPlugin):
    """Litestar's Struct schemas, plus what the decoder and encoder do: `additionalProperties:
    false` where unknown fields are refused, and an array (`prefixItems`) for array_like Structs
    such as the manifest's file entries. Give it in ``Litestar(plugins=[...])``: it comes first."""

    def to_openapi_schema(self, field_definition, schema_creator) -> Schema:
        schema = super().to_openapi_schema(field_definition, schema_creator)
        struct = field_definition.type_
        config = struct.__struct_config__
        if config.forbid_unknown_fields:
            schema.additional_properties = False
        info = msgspec.inspect.type_info(struct)
        assert isinstance(info, msgspec.inspect.StructType)  # this plugin is given Structs only
        for field in info.fields:
            _constrain(
                schema.properties.get(field.encode_name) if schema.properties else None, field.type
            )
        if config.array_like and schema.properties:
            fields = info.fields
            schema.prefix_items = [schema.properties[f.encode_name] for f in fields]
            schema.min_items = sum(1 for f in fields if f.required)
            schema.max_items = len(fields)
            schema.type, schema.properties, schema.required = OpenAPIType.ARRAY, None, None
        return schema


def _constrain(prop, info) -> None:
    """What Litestar leaves out of a field's schema: a number's zero bounds, a dict's size and key
    rules, the rules of a list's strings (it writes a dict's size as a string length, and drops
    the others)."""
    if not isinstance(prop, Schema):
        return
    mi = msgspec.inspect
    info = _bare(info)
    if isinstance(info, mi.UnionType):  # `X | None`: the rules are X's
        others = [t for t in info.types if not isinstance(t, mi.NoneType)]
        info = _bare(others[0]) if len(others) == 1 else info
    if isinstance(info, (mi.IntType, mi.FloatType)):
        # Litestar drops a bound of 0 (it tests the bound's truth): `gt=0` must reach clients.
        if info.gt is not None:
            prop.exclusive_minimum = info.gt
        if info.ge is not None:
            prop.minimum = info.ge
        if info.lt is not None:
            prop.exclusive_maximum = info.lt
        if info.le is not None:
            prop.maximum = info.le
    elif isinstance(info, mi.DictType):
        prop.min_length = prop.max_length = None
        prop.min_properties, prop.max_properties = info.min_length, info.max_length
        if isinstance(_bare(info.key_type), mi.StrType):
            prop.property_names = _string(_bare(info.key_type))
    elif (
        isinstance(info, mi.ListType)
        and isinstance(_bare(info.item_type), mi.StrType)
        and isinstance(prop.items, Schema)
    ):
        prop.items = _string(_bare(info.item_type)) or prop.items


def _bare(info):
    return info.type if isinstance(info, msgspec.inspect.Metadata) else info


def _string(info) -> Schema | None:
    if info.pattern is None and info.min_length is None and info.max_length is None:
        return None
    return Schema(
        type=OpenAPIType.STRING,
        pattern=info.pattern,
        min_length=info.min_length,
        max_length=info.max_length,
    )


def _spec(description: str) -> ResponseSpec:
    return ResponseSpec(
        data_container=ErrorEnvelope, description=description, generate_examples=False
    )


def finish_routes(app: Litestar) -> None:
    """Call once the app is made, before the document is first generated."""
    document_errors(app)
    fix_options_allow(app)
    describe_uploads(app)


def _text(description: str, **extra) -> Schema:
    return Schema(type=OpenAPIType.STRING, description=description, **extra)


# The multipart routes read their body as a stream (a 5 GB archive never sits in memory), so
# Litestar sees no body parameter to describe: their fields are written here, as docs/api.md says.
UPLOADS: dict[tuple[str, str], tuple[list[str], dict[str, Schema | Reference]]] = {
    ("/api/v1/models/{name}/builds", "post"): (
        ["archive", "entrypoint"],
        {
            "archive": _text(
                "The project folder's contents at the archive's root (.tar or .tar.zst).",
                format="binary",
            ),
            "entrypoint": _text(
                "path/to/file.py:function or path/to/file.R:function", pattern=ENTRY.pattern
            ),
            "requirements": _text(
                "A requirements file inside the archive (default requirements.txt when present)."
            ),
            "python": _text(
                "Python version of the environment, e.g. 3.11 (default: the server's).",
                pattern=PYTHON.pattern,
            ),
            "example_input": _text("JSON: an input the build calls the function with."),
            "example_output": _text(
                "JSON: the output expected for example_input; the build fails when it differs."
            ),
            "message": _text("What this build changes."),
            "labels": _text("JSON object of string labels."),
            "git_commit": _text("The source folder's git commit."),
        },
    ),
    ("/api/v1/builds/import", "post"): (
        ["archive"],
        {
            "archive": _text("A build exported by GET …/builds/{number}/export.", format="binary"),
            "model": _text("Import as this model (default: the exported build's model)."),
        },
    ),
}


def describe_uploads(app: Litestar) -> None:
    """Add the multipart request bodies of the upload routes to the OpenAPI document (made now,
    once: Litestar keeps it), and the raw bytes a build's file comes back as."""
    doc = app.plugins.get(OpenAPIPlugin).provide_openapi()
    paths = doc.paths or {}
    files = paths["/api/v1/models/{name}/builds/{number}/files/{path}"].get
    assert files is not None and files.responses is not None  # a documented GET route
    raw = files.responses["200"]
    assert isinstance(raw, OpenAPIResponse)  # made by Litestar, not a reference
    raw.content = {
        "text/plain": OpenAPIMediaType(schema=_text("A text file (code, requirements, …).")),
        "application/octet-stream": OpenAPIMediaType(
            schema=_text("Any other file.", format="binary")
        ),
    }
    for (path, method), (required, properties) in UPLOADS.items():
        operation = getattr(paths[path], method)
        operation.request_body = RequestBody(
            required=True,
            content={
                "multipart/form-data": OpenAPIMediaType(
                    schema=Schema(type=OpenAPIType.OBJECT, required=required, properties=properties)
                )
            },
        )


def fix_options_allow(app: Litestar) -> None:
    """Litestar makes a path's OPTIONS handler with its first route object and keeps it when more
    methods of that path join a new route object, so `Allow` lists only the first ones (`OPTIONS,
    POST` on /api/v1/models). Point each OPTIONS handler at the route it serves."""
    for route in app.routes:
        if not isinstance(route, HTTPRoute):
            continue
        for handler in route.route_handlers:
            if handler.http_methods != {"OPTIONS"} or handler.include_in_schema:
                continue
            for cell in getattr(handler.fn, "__closure__", None) or ():
                if isinstance(cell.cell_contents, HTTPRoute) and cell.cell_contents is not route:
                    cell.cell_contents = route


def document_errors(app: Litestar) -> None:
    """Add the error answers to every route handler's documented responses (a handler's own
    ``responses`` win), and the bearer token to every route but the public ones."""
    for route in app.routes:
        for handler in getattr(route, "route_handlers", ()):
            if not getattr(handler, "include_in_schema", True):
                continue
            codes = dict(_EVERY)
            if handler.opt.get("perm", "admin") != "public":
                codes.update(_GUARDED)
                handler.security = [{BEARER: []}]
            if handler.http_methods & {"POST", "PUT", "PATCH"}:
                codes.update(_WITH_BODY)
            handler.responses = {
                **{c: _spec(d) for c, d in codes.items()},
                **(handler.responses or {}),
            }
