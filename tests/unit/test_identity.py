"""Who a request is: only what the permission guard found, never a default with rights."""

from __future__ import annotations

import pytest
from litestar.connection import ASGIConnection
from modelport.auth import Identity, identity_of
from modelport.errors import AuthMissing


def _connection(**scope) -> ASGIConnection:
    return ASGIConnection({"type": "http", "path": "/api/v1/health", "headers": [], **scope})


def test_the_identity_the_guard_found_is_the_one_given():
    viewer = Identity("tok_1", "ci", "viewer")
    assert identity_of(_connection(identity=viewer)) is viewer


@pytest.mark.parametrize("scope", [{}, {"identity": None}, {"identity": "admin"}])
def test_a_request_the_guard_found_no_identity_for_is_nobody(scope):
    with pytest.raises(AuthMissing):
        identity_of(_connection(**scope))
