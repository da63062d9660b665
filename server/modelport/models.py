"""Models as a service: each change to a model written to the registry and to what serves it."""

from __future__ import annotations

from typing import Any

import msgspec

from modelport.auth import Auth
from modelport.gateway.routes import Routes
from modelport.observability.metrics import Recorder
from modelport.registry import models as rows
from modelport.registry.db import Database
from modelport.registry.records import Model, ModelCreated


class Models:
    """Create, change, delete a model and rotate its key, as one step each.

    A model lives in four places: its registry row, the access key cache (`Auth`), the gateway's
    table of models (`Routes`: auth flag, rate limit) and the prediction counters (`Recorder`).
    Every change goes through here, registry first, so that what serves predictions never knows
    a model the registry does not hold. Tokens are kept the same way by `Auth.issue_token`.
    """

    def __init__(self, db: Database, auth: Auth, routes: Routes, recorder: Recorder) -> None:
        self.db, self.auth, self.routes, self.recorder = db, auth, routes, recorder

    async def load(self) -> None:
        """At start: the gateway learns every model of the registry (the keys: `Auth.load`)."""
        for model in await rows.every(self.db):
            self._route(model)

    async def reload(self) -> None:
        """Another server changed models: the gateway's table and the keys as the registry
        has them (a model deleted there is dropped here, with its key and counters)."""
        models = await rows.every(self.db)
        for model in models:
            self._route(model)
        await self.auth.load_keys()
        names = {m.name for m in models}
        for gone in [name for name in self.routes.names() if name not in names]:
            self.auth.forget_model(gone)
            self.routes.drop_model(gone)
            self.recorder.forget(gone)

    async def create(
        self,
        name: str,
        *,
        owner: str,
        description: str = "",
        auth: bool = True,
        rate_limit_per_s: float | None = None,
        rate_limit_burst: int | None = None,
    ) -> ModelCreated:
        """A new model; its access key is in the answer, the one time it is shown."""
        secret, key_hash = self.auth.new_model_key(name)
        model = await rows.create(
            self.db,
            name=name,
            description=description,
            auth=auth,
            owner=owner,
            key_hash=key_hash,
            rate_limit_per_s=rate_limit_per_s,
            rate_limit_burst=rate_limit_burst,
        )
        self.auth.remember_key(name, key_hash)
        self._route(model)
        return ModelCreated(**msgspec.structs.asdict(model), access_key=secret)

    async def update(self, name: str, actor: str, changes: dict[str, Any]) -> Model:
        """Change the columns named in `changes` (description, auth, the rate limit's)."""
        model = await rows.update(self.db, name, actor, changes)
        self._route(model)
        return model

    async def delete(self, name: str, actor: str) -> None:
        """Delete the model and its builds (refused while a deployment serves it); its key stops
        working and its counters leave /metrics at once."""
        await rows.delete(self.db, name, actor)
        self.auth.forget_model(name)
        self.routes.drop_model(name)
        self.recorder.forget(name)

    async def rotate_key(self, name: str, actor: str) -> str:
        """A new access key (the secret, shown once); the old one stops working at once."""
        secret, key_hash = self.auth.new_model_key(name)
        await rows.set_access_key(self.db, name, actor, key_hash)
        self.auth.remember_key(name, key_hash)
        return secret

    def _route(self, model: Model) -> None:
        self.routes.set_model(
            model.name,
            auth=model.auth,
            rate_limit_per_s=model.rate_limit_per_s,
            rate_limit_burst=model.rate_limit_burst,
        )
