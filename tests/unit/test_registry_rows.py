"""The registry's rows as Structs: what a database returns (a dict per row) read into them."""

from __future__ import annotations

import msgspec
import pytest
from modelport.registry.records import ReplayDiff
from modelport.registry.rows import (
    BuildRow,
    CaptureRow,
    ModelRow,
    ReplayReportRow,
    TokenRow,
    TrackedRow,
    load,
)

MODEL = {
    "id": 3,
    "name": "adder",
    "description": "",
    "auth": 1,  # SQLite's boolean
    "owner": "admin",
    "access_key_hash": "h",
    "next_build": 2,
    "created_at": "t0",
    "updated_at": "t1",
    "rate_limit_per_s": None,
    "rate_limit_burst": None,
}


def test_a_row_takes_its_columns_converted_to_their_types():
    row = load(ModelRow, MODEL)
    assert row.auth is True and row.id == 3 and row.name == "adder"
    assert load(ModelRow, MODEL | {"auth": False}).auth is False  # PostgreSQL's boolean


def test_a_joined_column_the_row_does_not_name_is_left():
    assert load(ModelRow, MODEL | {"model": "other"}) == load(ModelRow, MODEL)


def test_a_row_is_frozen():
    row = load(ModelRow, MODEL)
    with pytest.raises(AttributeError):
        row.name = "x"  # type: ignore[misc]


def test_json_columns_are_decoded_and_null_stays_none():
    build = {
        "id": 1,
        "model_id": 3,
        "number": 1,
        "status": "built",
        "digest": "sha256:ab",
        "entrypoint": "m.py:f",
        "python": "3.11",
        "requirements": None,
        "message": "",
        "labels": '{"team":"a"}',
        "created_by": "admin",
        "created_at": "t",
        "started_at": None,
        "finished_at": None,
        "error": None,
        "input_schema": '{"type":"object"}',
        "output_schema": None,
        "example_input": '{"a":1}',
        "example_output": "0",
        "size_bytes": 10,
        "new_bytes": 5,
        "snapshot": "sha256:cd",
        "manifest": None,
        "lock_digest": None,
        "git_commit": None,
    }
    row = load(BuildRow, build)
    assert row.labels == {"team": "a"} and row.input_schema == {"type": "object"}
    assert row.output_schema is None and row.example_input == {"a": 1}
    assert row.example_output == 0


def test_a_column_of_the_wrong_kind_is_refused():
    with pytest.raises(msgspec.ValidationError):
        load(ModelRow, MODEL | {"id": "three"})


def test_a_token_row_decodes_its_models():
    token = {
        "id": "tok_1",
        "name": "ci",
        "role": "predict",
        "models": '["adder"]',
        "hash": "h",
        "created_by": None,
        "created_at": "t",
        "expires_at": None,
        "last_used_at": None,
        "revoked_at": None,
    }
    assert load(TokenRow, token).models == ["adder"]


CAPTURE = {
    "id": 7,
    "model_id": 3,
    "build": 2,
    "request_id": "r1",
    "at": 1700000000.5,
    "status": 200,
    "latency_s": 0.01,
    "request": b'{"a": 1}',
    "response": b"2",
    "truncated": 0,  # SQLite's boolean
    "source": "shadow",
}


def test_a_capture_keeps_its_bytes_and_reads_its_flag():
    row = load(CaptureRow, CAPTURE)
    assert row.request == b'{"a": 1}' and row.response == b"2"
    assert row.truncated is False and row.source == "shadow"
    assert load(CaptureRow, CAPTURE | {"truncated": 1}).truncated is True


def test_a_replay_report_decodes_its_diffs():
    report = {
        "id": 4,
        "model_id": 3,
        "from_build": 1,
        "to_build": 2,
        "source": "capture",
        "status": "done",
        "since": 0.0,
        "until": 50.0,
        "max_requests": 10,
        "rtol": 1e-9,
        "atol": 0.0,
        "replayed": 2,
        "equal": 1,
        "different": 1,
        "skipped": 0,
        "errors_from": 0,
        "errors_to": 0,
        "p50_ms_from": 1.5,
        "p50_ms_to": None,
        "diffs": '[{"request_id":"r1","path":"$.a","old":1,"new":[2],"kind":"changed"}]',
        "error": None,
        "created_by": "admin",
        "at": 100.0,
        "finished_at": 101.0,
        "node": "a",
    }
    row = load(ReplayReportRow, report)
    assert row.diffs == [ReplayDiff("r1", "$.a", 1, [2], "changed")]
    with pytest.raises(msgspec.ValidationError):
        load(ReplayReportRow, report | {"status": "paused"})


def test_tracked_metrics_are_decoded_and_a_value_stored_as_null_stays_none():
    tracked = {
        "id": 1,
        "model_id": 3,
        "request_id": "r1",
        "build": None,
        "at": 5.0,
        "metrics": '{"score":0.5,"odd":null}',
    }
    assert load(TrackedRow, tracked).metrics == {"score": 0.5, "odd": None}
