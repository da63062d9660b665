"""Time as the API shows it: ISO-8601 UTC with milliseconds and a Z."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta


def iso(dt: datetime) -> str:
    return dt.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def now_iso() -> str:
    return iso(datetime.now(UTC))


def in_days_iso(days: float) -> str:
    return iso(datetime.now(UTC) + timedelta(days=days))


def parse_iso(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))
