"""The promotion gate: a candidate takes the traffic only on a replay report that matches.

`POST …/promote {"if_replay_matches": id}` (and a deployment with ``require_replay: true``)
calls ``check_promotion`` before it promotes; it raises 409 replay.mismatch, saying why, when
the report differs, is not done, or compares other builds than the primary and the candidate.
"""

from __future__ import annotations

from modelport.errors import ReplayMismatch
from modelport.registry import deployments as deployment_rows
from modelport.registry import replays as report_rows
from modelport.registry.db import Database
from modelport.registry.rows import DeploymentRow, ModelRow, ReplayReportRow


def verdict(
    report: ReplayReportRow | None, *, primary_build: int, candidate_build: int
) -> str | None:
    """Why ``report`` does not let the candidate be promoted, or None when it does (pure)."""
    if report is None:
        return "there is no such replay report of this model"
    if (report.from_build, report.to_build) != (primary_build, candidate_build):
        return (
            f"report {report.id} replayed build #{report.from_build} on "
            f"#{report.to_build}, not the primary #{primary_build} on the candidate "
            f"#{candidate_build}"
        )
    if report.status != "done":
        return f"report {report.id} is {report.status}, not done"
    if report.replayed == 0:
        return f"report {report.id} replayed no request"
    if report.different:
        return (
            f"report {report.id}: {report.different} of {report.replayed} replayed "
            "requests were answered differently"
        )
    return None


async def check_promotion(
    db: Database,
    model_id: int,
    *,
    primary_build: int,
    candidate_build: int,
    report_id: int | None,
    required: bool = False,
) -> ReplayReportRow | None:
    """The report that lets the candidate be promoted (None when none was asked for nor
    required); ReplayMismatch (409 replay.mismatch) saying why not otherwise."""
    if report_id is None:
        if required:
            raise ReplayMismatch(
                "This deployment requires a matching replay report (require_replay): "
                "promote with if_replay_matches (CLI --if-replay-matches)."
            )
        return None
    report = await report_rows.row(db, model_id, report_id)
    why = verdict(report, primary_build=primary_build, candidate_build=candidate_build)
    if why is not None:
        raise ReplayMismatch(f"Not promoted: {why}.")
    return report


def promotion_gate(db: Database):
    """``check_promotion`` as the deployer's ``replay_gate`` hook takes it: (model, report id,
    the candidate's deployment row); the primary is the model's current deployment."""

    async def gate(model: ModelRow, report_id: int | None, candidate: DeploymentRow) -> None:
        primary = await deployment_rows.current(db, model.id)
        if primary is None:
            raise ReplayMismatch("Not promoted: the model has no primary deployment.")
        await check_promotion(
            db,
            model.id,
            primary_build=primary.build_number,
            candidate_build=candidate.build_number,
            report_id=report_id,
            required=candidate.require_replay or primary.require_replay,
        )

    return gate
