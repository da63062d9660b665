"""The private parts of uvicorn and Litestar that modelport builds on are still there.

gateway/http.py subclasses uvicorn's httptools protocol (its prediction lane takes over
`_start_asgi_task` and reads the protocol's parser, pipeline, flow and cycle); api/openapi.py
extends Litestar's Struct schema plugin and edits the document Litestar's OpenAPI plugin made.
pyproject.toml pins both to the ranges tested; after an upgrade this test says what moved.
"""

from __future__ import annotations

import inspect

import httptools
import uvicorn
from litestar._openapi.plugin import OpenAPIPlugin
from litestar._openapi.schema_generation.plugins import StructSchemaPlugin
from modelport.gateway.http import PredictionProtocol
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


def test_uvicorns_protocol_hooks():
    start = inspect.signature(HttpToolsProtocol._start_asgi_task)
    assert list(start.parameters) == ["self", "cycle", "app"]
    for hook in (
        "connection_made",
        "data_received",
        "connection_lost",
        "on_message_begin",
        "on_headers_complete",
        "on_body",
        "on_message_complete",
        "shutdown",
    ):
        assert callable(getattr(HttpToolsProtocol, hook)), hook
    # Attributes the lane reads, set by uvicorn's __init__ / connection_made.
    source = inspect.getsource(HttpToolsProtocol)
    for attribute in (
        "self.parser",
        "self.pipeline",
        "self.flow",
        "self.cycle",
        "self.server_state",
        "self.transport",
        "self.expect_100_continue",
    ):
        assert attribute in source, attribute
    assert issubclass(PredictionProtocol, HttpToolsProtocol)
    assert hasattr(httptools, "parse_url") and uvicorn.__version__


def test_litestars_openapi_hooks():
    assert callable(OpenAPIPlugin.provide_openapi)
    assert "field_definition" in inspect.signature(StructSchemaPlugin.to_openapi_schema).parameters
