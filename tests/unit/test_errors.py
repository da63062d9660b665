"""Every error reaches the API through one mapping: what each kind of failure is answered with."""

from __future__ import annotations

import msgspec
import pytest
from litestar.exceptions import ValidationException
from modelport.errors import ModelportError, ScaleFailed, body_refused, to_modelport_error
from modelport.runtime.invoke import refused
from modelport.store.archive import ArchiveInvalid, ArchiveTooLarge, ArchiveUnsafe


@pytest.mark.parametrize(
    ("error", "status", "code"),
    [
        (ArchiveUnsafe("'../x' leaves the folder", member="../x"), 400, "archive.unsafe"),
        (ArchiveInvalid("not a tar"), 400, "archive.invalid"),
        (ArchiveTooLarge("over the limit"), 413, "archive.too_large"),
        (ScaleFailed("Scaling to 3 replicas failed"), 409, "deployment.scale_failed"),
    ],
)
def test_errors_of_every_layer_carry_their_status_and_code(error, status, code):
    answered = to_modelport_error(error)
    assert isinstance(error, ModelportError) and answered is error
    assert (answered.status, answered.code) == (status, code)
    assert answered.message == str(error)


@pytest.mark.parametrize(
    ("message", "key", "field"),
    [
        ("Object contains unknown field `colour`", "data", "colour"),
        ("Object missing required field `name`", None, "name"),
        ("Object missing required field `x`", "inner", "inner.x"),
        ("Expected `int >= 1`", "limit", "limit"),
        ("Expected `str`, got `int`", "env.A", "env.A"),
    ],
)
def test_a_refused_request_names_the_bad_field(message, key, field):
    extra = [{"message": message} | ({"key": key} if key else {})]
    answered = to_modelport_error(ValidationException(extra=extra))
    assert (answered.status, answered.code, answered.field) == (422, "request.invalid", field)


def test_a_body_that_is_no_object_is_malformed():
    extra = [{"message": "Expected `object`, got `array`", "key": "data"}]
    assert to_modelport_error(ValidationException(extra=extra)).code == "request.malformed"


@pytest.mark.parametrize(
    ("body", "code", "field"),
    [
        (b'{"request": 3}', "request.invalid", "request"),
        (b"[1]", "request.malformed", None),
        (b"{", "request.malformed", None),
        (b"[" * 5000 + b"]" * 5000, "request.malformed", None),
    ],
)
def test_a_body_the_gateway_decodes_is_refused_as_a_replica_refuses_it(body, code, field):
    class Inner(msgspec.Struct):
        request: dict

    try:
        msgspec.json.decode(body, type=Inner)
    except (msgspec.DecodeError, RecursionError) as exc:
        answered, failed = body_refused(exc), refused(exc)
    assert (answered.code, answered.field) == (code, field)
    assert (answered.status, answered.message) == (failed.status, failed.message)
