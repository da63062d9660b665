"""What the gateway knows of each model: whether it exists, its auth flag, the group serving it."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from modelport.serving.supervisor import ReplicaGroup, Supervisor

__all__ = ["Routes"]


class Routes:
    """In memory, no database: the lead keeps it current.

    - ``set_model(name, auth=...)`` when a model is created, its ``auth`` flag changes, or at
      startup for every model in the registry; ``drop_model(name)`` when it is deleted.
    - The serving group comes from the supervisor's ``active`` table (switched by the supervisor
      itself: one dict store, atomic for the event loop). Without a supervisor, ``set_group``.
    """

    __slots__ = ("_auth", "_groups")

    def __init__(self, supervisor: Supervisor | None = None) -> None:
        self._auth: dict[str, bool] = {}
        self._groups: dict[str, ReplicaGroup] = supervisor.active if supervisor else {}

    def attach(self, supervisor: Supervisor) -> None:
        """Read the groups from this supervisor (when it is made after the Routes)."""
        supervisor.active.update(self._groups)
        self._groups = supervisor.active

    def set_model(self, name: str, *, auth: bool = True) -> None:
        self._auth[name] = auth

    def drop_model(self, name: str) -> None:
        self._auth.pop(name, None)

    def set_group(self, name: str, group: ReplicaGroup | None) -> None:
        if group is None:
            self._groups.pop(name, None)
        else:
            self._groups[name] = group

    def auth_flag(self, name: str) -> bool | None:
        """The model's ``auth`` flag; None when there is no such model."""
        return self._auth.get(name)

    def group(self, name: str) -> ReplicaGroup | None:
        return self._groups.get(name)

    def max_body(self, default: int) -> int:
        """The largest body any served model accepts (for POST /model before the key is known)."""
        return max((g.max_body for g in self._groups.values()), default=default)

    def __contains__(self, name: str) -> bool:
        return name in self._auth
