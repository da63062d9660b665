"""The private parts of uvicorn and Litestar that modelport builds on are still there.

gateway/http.py subclasses uvicorn's httptools protocol (its prediction lane takes over
`_start_asgi_task` and reads and resets the protocol's parser state, pipeline, flow control, cycle
and server state); cli/serve.py subclasses uvicorn's Server (its startup, and the signals its
graceful shutdown captured, which it clears so that the process exits 0) and hands uvicorn the
protocol as a class; api/openapi.py extends Litestar's Struct schema plugin and edits the document
Litestar's OpenAPI plugin made. pyproject.toml pins both to the ranges tested; after an upgrade
this test says what moved.
"""

from __future__ import annotations

import inspect

import httptools
import uvicorn
from litestar._openapi.plugin import OpenAPIPlugin
from litestar._openapi.schema_generation.plugins import StructSchemaPlugin
from modelport.cli.serve import CleanExitServer
from modelport.gateway.http import PredictionProtocol
from uvicorn.protocols.http.flow_control import FlowControl
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle
from uvicorn.server import ServerState


def _sets(cls: type, *attributes: str) -> list[str]:
    """The attributes of `attributes` that no method of `cls` assigns (`self.x =` or `self.x:`)."""
    source = inspect.getsource(cls)
    return [a for a in attributes if f"self.{a} =" not in source and f"self.{a}:" not in source]


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
    # What the lane reads (and on_message_begin resets), set by uvicorn's __init__, connection_made
    # and its parser callbacks.
    unset = _sets(
        HttpToolsProtocol,
        "parser",
        "pipeline",
        "flow",
        "cycle",
        "server_state",
        "transport",
        "expect_100_continue",
        "url",
        "headers",
        "scope",
        "client",
        "loop",
        "tasks",
        "timeout_keep_alive",
    )
    assert unset == []
    assert _sets(RequestResponseCycle, "response_complete") == []
    assert _sets(ServerState, "default_headers", "total_requests") == []
    assert callable(FlowControl.pause_reading) and callable(FlowControl.resume_reading)
    assert issubclass(PredictionProtocol, HttpToolsProtocol)
    assert hasattr(httptools, "parse_url") and uvicorn.__version__


def test_uvicorns_server_hooks():
    assert issubclass(CleanExitServer, uvicorn.Server)
    assert list(inspect.signature(uvicorn.Server.startup).parameters) == ["self", "sockets"]
    assert callable(uvicorn.Server.capture_signals)
    assert _sets(uvicorn.Server, "_captured_signals", "started", "should_exit") == []
    # Config(http=...) takes the protocol class itself, not only a name.
    config = uvicorn.Config(
        lambda scope, receive, send: None, http=PredictionProtocol, log_config=None
    )
    config.load()
    assert config.http_protocol_class is PredictionProtocol


def test_litestars_openapi_hooks():
    assert callable(OpenAPIPlugin.provide_openapi)
    params = inspect.signature(StructSchemaPlugin.to_openapi_schema).parameters
    assert list(params)[1:] == ["field_definition", "schema_creator"]
