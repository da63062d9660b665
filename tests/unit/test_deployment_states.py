"""A deployment's status as its events lead it (registry/states.py): every event kind, every move
it may make and every one it may not; the strings the API shows (docs/api.md)."""

from __future__ import annotations

import re
from itertools import product
from pathlib import Path

import pytest
from modelport.registry.states import (
    ACTIVE_DEPLOYMENT,
    DEPLOYMENT_STATUSES,
    EVENT_KINDS,
    LEADS_TO,
    IllegalMove,
    finishes,
    moving,
    status_after,
)

# Written out here, not derived from the table: a change to the table is a change to this list.
MOVES = {
    (None, "created"): "pending",
    ("pending", "deploying"): "deploying",
    ("pending", "deployed"): "deployed",  # the switch: a deployment on its way may take it
    ("deploying", "deployed"): "deployed",
    ("pending", "replaced"): "stopped",
    ("deploying", "replaced"): "stopped",
    ("deployed", "replaced"): "stopped",
    ("stopping", "replaced"): "stopped",
    ("deployed", "stopping"): "stopping",
    ("stopping", "stopped"): "stopped",
    ("pending", "interrupted"): "stopped",
    ("deploying", "interrupted"): "stopped",
    ("deployed", "interrupted"): "stopped",  # a restore interrupted by a stop
    ("pending", "failed"): "failed",
    ("deploying", "failed"): "failed",
    ("deployed", "failed"): "failed",  # a restore that could not start
    # a candidate (a canary or a shadow beside the current deployment)
    (None, "candidate.created"): "candidate",
    ("candidate", "promoted"): "deployed",
    ("candidate", "aborted"): "stopped",
    ("candidate", "replaced"): "stopped",  # a full replace ends the candidate too
    ("candidate", "interrupted"): "stopped",
    ("candidate", "failed"): "failed",
}
# A late report of a deployment already finished (by another server, a stop): it stays finished.
LATE = ["deploying", "replaced", "stopping", "stopped", "interrupted", "failed", "aborted"]
MOVES |= {(finished, kind): finished for finished in ("failed", "stopped") for kind in LATE}
HISTORY_ONLY = {
    "scaled",
    "scale_failed",
    "restarting",
    "restarted",
    "restart_interrupted",
    "restart_failed",
    "restoring",
    "restored",
    "group.failed",
    "replica.crashed",
    "candidate.added",
    "candidate.ready",
    "candidate.failed",
    "traffic",
    "guard.tripped",
    "server.ready",
    "server.failed",
    "server.restarted",
    "server.restart_failed",
}
BEFORE = [None, *DEPLOYMENT_STATUSES]


def test_every_event_kind_has_its_entry_and_no_other():
    assert set(LEADS_TO) == set(EVENT_KINDS)
    assert len(EVENT_KINDS) == len(set(EVENT_KINDS)) == 30
    assert {kind for _, kind in MOVES} | HISTORY_ONLY == set(EVENT_KINDS)
    assert {kind for kind, moves in LEADS_TO.items() if moves is None} == HISTORY_ONLY


@pytest.mark.parametrize(("status", "kind"), list(product(BEFORE, EVENT_KINDS)))
def test_each_event_from_each_status(status, kind):
    if (status, kind) in MOVES:
        assert status_after(status, kind) == MOVES[status, kind]
    elif kind in HISTORY_ONLY and status is not None:
        assert status_after(status, kind) == status  # recorded, the status stays
    else:
        with pytest.raises(IllegalMove, match=re.escape(repr(kind))):
            status_after(status, kind)


def test_the_illegal_moves_are_every_other_pair():
    illegal = []
    for status, kind in product(BEFORE, EVENT_KINDS):
        try:
            status_after(status, kind)
        except IllegalMove:
            illegal.append((status, kind))
    assert len(illegal) == len(BEFORE) * len(EVENT_KINDS) - len(MOVES) - 7 * len(HISTORY_ONLY)
    assert ("stopped", "deployed") in illegal  # a finished deployment does not come back
    assert ("failed", "deployed") in illegal
    assert ("deployed", "deploying") in illegal
    assert ("stopping", "deploying") in illegal
    assert ("deployed", "stopped") in illegal  # a stop goes through stopping
    assert ("pending", "created") in illegal
    assert (None, "scaled") in illegal


@pytest.mark.parametrize(("status", "kind"), list(product(BEFORE, EVENT_KINDS)))
def test_the_servers_restart_fails_what_never_took_traffic(status, kind):
    if kind == "interrupted":
        if status in ("pending", "deploying"):
            assert status_after(status, kind, at_restart=True) == "failed"
        elif status == "candidate":  # a candidate is only a trial: stopped, the primary serves
            assert status_after(status, kind, at_restart=True) == "stopped"
        else:
            with pytest.raises(IllegalMove):
                status_after(status, kind, at_restart=True)
        return
    try:
        expected = status_after(status, kind)
    except IllegalMove:
        with pytest.raises(IllegalMove):
            status_after(status, kind, at_restart=True)
    else:  # every other event means the same whatever its cause
        assert status_after(status, kind, at_restart=True) == expected


def test_a_move_into_failed_or_stopped_finishes_the_deployment():
    finishing = {
        (s, k) for (s, k), after in MOVES.items() if after in ("failed", "stopped") and s != after
    }
    for (status, kind), after in MOVES.items():
        if status is not None:
            assert finishes(status, after) == ((status, kind) in finishing)
    assert not finishes("stopped", "stopped")  # a late crash event of a stopped deployment
    assert not finishes("deployed", "stopping")


def test_the_active_statuses_are_those_a_move_leaves_for_a_finished_one():
    left_for_finished = {
        s for (s, _), after in MOVES.items() if after in ("failed", "stopped") and s != after
    }
    assert set(ACTIVE_DEPLOYMENT) - {"stopping"} <= left_for_finished
    assert set(ACTIVE_DEPLOYMENT) == set(DEPLOYMENT_STATUSES) - {
        "failed",
        "stopped",
        "candidate",
    }


def test_the_api_reference_names_only_these_strings():
    api = (Path(__file__).resolve().parents[2] / "docs" / "api.md").read_text()
    deployment = api[api.index("A **deployment**") : api.index("A **replica**")]
    kinds = re.search(r"each event `at, kind, actor, detail` \(([^)]*)\)", deployment)
    assert kinds is not None
    named = re.findall(r"[a-z_.]+", re.sub(r", which (do not|move the status)", "", kinds[1]))
    assert sorted(named) == sorted(EVENT_KINDS)
    statuses = re.search(r"status` \(([^)]*)\)", deployment)
    assert statuses is not None
    assert set(re.findall(r"`([a-z]+)`", statuses.group(1))) == set(DEPLOYMENT_STATUSES)


def test_the_statuses_each_event_moves_from():
    assert moving("deployed") == ("pending", "deploying")  # what the switch may take
    assert moving("stopped") == ("stopping",)
    assert moving("scaled") == ()
    for kind in EVENT_KINDS:
        assert set(moving(kind)) == {
            s for (s, k), after in MOVES.items() if k == kind and s is not None and after != s
        }
