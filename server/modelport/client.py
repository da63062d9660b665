"""The Python SDK over the REST API: `from modelport import Client`."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import httpx
import msgspec

from modelport.settings import DEFAULT_URL, resolve_data_dir


class ApiError(Exception):
    """An error answer from the server, in the SPEC's shape."""

    def __init__(self, status: int, code: str, message: str, field: str | None = None):
        super().__init__(f"{code}: {message}" + (f" (field: {field})" if field else ""))
        self.status, self.code, self.message, self.field = status, code, message, field


def find_token(token: str | None = None, data_dir: str | Path | None = None) -> str | None:
    """--token, else MODELPORT_TOKEN, else the admin token file in the data dir."""
    if token:
        return token
    if os.environ.get("MODELPORT_TOKEN"):
        return os.environ["MODELPORT_TOKEN"]
    path = resolve_data_dir(data_dir) / "admin.token"
    try:
        return path.read_text().strip() or None
    except OSError:
        return None


class Client:
    """Talks to a modelport server; every method returns decoded JSON or raises ApiError."""

    def __init__(
        self, url: str | None = None, token: str | None = None, *,
        data_dir: str | Path | None = None, timeout: float = 60.0,
    ):
        self.url = (url or os.environ.get("MODELPORT_URL") or DEFAULT_URL).rstrip("/")
        self.token = find_token(token, data_dir)
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        self.http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout)

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def request(self, method: str, path: str, **kwargs) -> Any:
        response = self.http.request(method, path, **kwargs)
        return self._decode(response)

    @staticmethod
    def _decode(response: httpx.Response) -> Any:
        if response.status_code >= 400:
            try:
                err = msgspec.json.decode(response.content)["error"]
            except Exception:
                raise ApiError(response.status_code, "http.error", response.text[:500]) from None
            raise ApiError(response.status_code, err["code"], err["message"], err.get("field"))
        if not response.content:
            return None
        if response.headers.get("content-type", "").startswith("application/json"):
            return msgspec.json.decode(response.content)
        return response.content

    # Models
    def health(self) -> dict:
        return self.request("GET", "/api/v1/health")

    def models(self, limit: int | None = None, cursor: str | None = None) -> dict:
        return self.request("GET", "/api/v1/models", params=_params(limit=limit, cursor=cursor))

    def model(self, name: str) -> dict:
        return self.request("GET", f"/api/v1/models/{name}")

    def create_model(self, name: str, description: str = "", auth: bool = True) -> dict:
        body = {"name": name, "description": description, "auth": auth}
        return self.request("POST", "/api/v1/models", json=body)

    def update_model(self, name: str, **changes) -> dict:
        return self.request("PATCH", f"/api/v1/models/{name}", json=changes)

    def delete_model(self, name: str) -> None:
        return self.request("DELETE", f"/api/v1/models/{name}")

    def rotate_key(self, name: str) -> dict:
        return self.request("POST", f"/api/v1/models/{name}/access-key/rotate")

    # Tokens and audit
    def tokens(self) -> dict:
        return self.request("GET", "/api/v1/tokens")

    def create_token(
        self, name: str, role: str, expires_in_days: float | None = 365, models: list[str] = ()
    ) -> dict:
        body = {"name": name, "role": role, "expires_in_days": expires_in_days,
                "models": list(models)}
        return self.request("POST", "/api/v1/tokens", json=body)

    def revoke_token(self, token_id: str) -> dict:
        return self.request("DELETE", f"/api/v1/tokens/{token_id}")

    def audit(self, model: str | None = None, limit: int | None = None) -> dict:
        return self.request("GET", "/api/v1/audit", params=_params(model=model, limit=limit))


def _params(**values) -> dict:
    return {k: v for k, v in values.items() if v is not None}
