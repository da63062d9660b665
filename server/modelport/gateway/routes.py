"""What the gateway knows of each model: whether it exists, its auth flag and rate limit, the group
serving it."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .ratelimit import RateLimit

if TYPE_CHECKING:
    from modelport.serving.supervisor import ReplicaGroup, Supervisor

__all__ = ["Routes"]


class Routes:
    """In memory, no database: the models service (modelport/models.py) keeps it current.

    - ``set_model(name, auth=..., rate_limit_per_s=..., rate_limit_burst=...)`` when a model is
      created or changed, or at startup for every model in the registry; ``drop_model(name)``
      when it is deleted.
    - ``limits`` holds a RateLimit only for models that have one, so an unlimited model costs the
      hot path one dict lookup.
    - The serving group comes from the supervisor's ``active`` table (switched by the supervisor
      itself: one dict store, atomic for the event loop). Without a supervisor, ``set_group``.
    """

    __slots__ = ("_auth", "_groups", "limits")

    def __init__(self, supervisor: Supervisor | None = None) -> None:
        self._auth: dict[str, bool] = {}
        self.limits: dict[str, RateLimit] = {}
        self._groups: dict[str, ReplicaGroup] = supervisor.active if supervisor else {}

    def set_model(
        self,
        name: str,
        *,
        auth: bool = True,
        rate_limit_per_s: float | None = None,
        rate_limit_burst: int | None = None,
    ) -> None:
        self._auth[name] = auth
        if rate_limit_per_s is None:
            self.limits.pop(name, None)
            return
        current = self.limits.get(name)
        if current is None or not current.same_as(rate_limit_per_s, rate_limit_burst):
            self.limits[name] = RateLimit(rate_limit_per_s, rate_limit_burst)

    def drop_model(self, name: str) -> None:
        self._auth.pop(name, None)
        self.limits.pop(name, None)

    def names(self) -> list[str]:
        """Every model the gateway knows."""
        return list(self._auth)

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
