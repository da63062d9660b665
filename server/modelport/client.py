"""The Python SDK over the REST API: `from modelport import Client`."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import msgspec

from modelport import servers
from modelport.settings import DEFAULT_URL, resolve_data_dir

if TYPE_CHECKING:
    from modelport.store.ignore import PackResult


class ApiError(Exception):
    """An error answer from the server, in the shape of docs/api.md's errors."""

    def __init__(self, status: int, code: str, message: str, field: str | None = None):
        super().__init__(f"{code}: {message}" + (f" (field: {field})" if field else ""))
        self.status, self.code, self.message, self.field = status, code, message, field


def find_token(
    token: str | None = None, data_dir: str | Path | None = None, url: str | None = None
) -> tuple[str | None, list[str]]:
    """--token, else MODELPORT_TOKEN, else the admin token of a data dir named by --data-dir or
    MODELPORT_HOME, else what the server at ``url`` left in the user's config dir (its data
    dir, for a loopback URL, or a token stored by `modelport login`), else ./artifacts/admin.token.
    Returns the token and the places looked at (for a message when there is none)."""
    if token:
        return token, []
    if os.environ.get("MODELPORT_TOKEN"):
        return os.environ["MODELPORT_TOKEN"], []
    looked = ["--token", "MODELPORT_TOKEN"]
    if data_dir or os.environ.get("MODELPORT_HOME"):
        return _token_file(resolve_data_dir(data_dir) / "admin.token", looked)
    found, where = servers.find_token(url or os.environ.get("MODELPORT_URL") or DEFAULT_URL)
    looked += where
    if found:
        return found, looked
    return _token_file(resolve_data_dir(None) / "admin.token", looked)


def _token_file(path: Path, looked: list[str]) -> tuple[str | None, list[str]]:
    looked.append(str(path))
    try:
        return path.read_text().strip() or None, looked
    except OSError:
        return None, looked


class Upload(msgspec.Struct):
    """What `upload_build` did: the build it queued, what it packed, and the model it created for
    the build (with its access key, shown this once), or None when the model existed."""

    build: dict[str, Any]
    packed: PackResult
    created_model: dict[str, Any] | None = None


class Prediction(msgspec.Struct):
    """A model's answer, and what the server said of it in its headers."""

    result: Any
    request_id: str
    build: int | None = None
    digest: str | None = None
    replica: str | None = None


class Client:
    """Talks to a modelport server; every method returns decoded JSON or raises ApiError."""

    def __init__(
        self,
        url: str | None = None,
        token: str | None = None,
        *,
        data_dir: str | Path | None = None,
        timeout: float = 60.0,
    ):
        self.url = (url or os.environ.get("MODELPORT_URL") or DEFAULT_URL).rstrip("/")
        self.token, self.token_looked = find_token(token, data_dir, self.url)
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        self.http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout)

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def request(self, method: str, path: str, **kwargs) -> Any:
        response = self.http.request(method, path, **kwargs)
        return self._decode(response)

    def _decode(self, response: httpx.Response) -> Any:
        if response.status_code >= 400:
            try:
                err = msgspec.json.decode(response.content)["error"]
            except Exception:
                raise ApiError(response.status_code, "http.error", response.text[:500]) from None
            message = err["message"]
            if err["code"] == "auth.missing" and not self.token:
                message += (
                    " No token was found: looked at "
                    + ", ".join(self.token_looked)
                    + " (`modelport login URL` stores one for a remote server)."
                )
            raise ApiError(response.status_code, err["code"], message, err.get("field"))
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
        self, name: str, role: str, expires_in_days: float | None = 365, models: Sequence[str] = ()
    ) -> dict:
        body = {
            "name": name,
            "role": role,
            "expires_in_days": expires_in_days,
            "models": list(models),
        }
        return self.request("POST", "/api/v1/tokens", json=body)

    def revoke_token(self, token_id: str) -> dict:
        return self.request("DELETE", f"/api/v1/tokens/{token_id}")

    def audit(self, model: str | None = None, limit: int | None = None) -> dict:
        return self.request("GET", "/api/v1/audit", params=_params(model=model, limit=limit))

    # Builds

    def upload_build(
        self,
        folder: str | Path,
        name: str,
        entry: str,
        *,
        requirements=None,
        python=None,
        example_input=None,
        example_output=None,
        message="",
        labels=None,
        create=True,
        on_pack=None,
        on_upload=None,
    ) -> Upload:
        """Pack the folder (honouring .gitignore/.modelportignore), upload it; the build is queued.
        A model created for it (``create``) is deleted again when the upload is refused.
        ``on_pack(bytes)`` and ``on_upload(bytes, total)`` report progress."""
        folder = Path(folder)
        if not folder.is_dir():
            raise ApiError(0, "client.invalid", f"{folder} is not a folder")
        created = None
        if create:
            try:
                self.model(name)
            except ApiError as exc:
                if exc.code != "model.not_found":
                    raise
                created = self.create_model(name)
        try:
            build, packed = self._upload(
                folder,
                name,
                _build_fields(
                    entry,
                    requirements,
                    python,
                    example_input,
                    example_output,
                    message,
                    labels,
                    git_commit(folder),
                ),
                on_pack,
                on_upload,
            )
        except BaseException:
            # A refused upload (a bad entrypoint, a folder that cannot be packed, Ctrl-C) must not
            # leave behind a model made for it, whose access key nobody has seen.
            if created is not None:
                with contextlib.suppress(ApiError, httpx.HTTPError):
                    self.delete_model(name)
            raise
        return Upload(build, packed, created)

    def _upload(
        self, folder: Path, name: str, fields: dict, on_pack, on_upload
    ) -> tuple[dict, PackResult]:
        import tempfile

        from modelport.store.archive import pack

        with tempfile.TemporaryFile() as tmp:
            packed = pack(folder, tmp, progress=on_pack)
            size = tmp.tell()
            tmp.seek(0)
            progress = (lambda n: on_upload(n, size)) if on_upload else None
            files = {
                "archive": ("project.tar.zst", _ProgressFile(tmp, progress), "application/zstd")
            }
            return self.request(
                "POST", f"/api/v1/models/{name}/builds", data=fields, files=files, timeout=None
            ), packed

    def builds(self, name: str, limit: int | None = None) -> dict:
        return self.request("GET", f"/api/v1/models/{name}/builds", params=_params(limit=limit))

    def get_build(self, name: str, number: int) -> dict:
        return self.request("GET", f"/api/v1/models/{name}/builds/{number}")

    def build_log(self, name: str, number: int) -> str:
        return self.http.get(f"/api/v1/models/{name}/builds/{number}/log").text

    def follow_build_log(self, name: str, number: int):
        """Yield the build's log lines as they are written, until the build ends."""
        with self.http.stream(
            "GET",
            f"/api/v1/models/{name}/builds/{number}/log",
            params={"follow": "1"},
            timeout=None,
        ) as response:
            if response.status_code >= 400:
                response.read()
                self._decode(response)
            yield from response.iter_lines()

    def wait_build(self, name: str, number: int, on_line=None) -> dict:
        """Follow the log until the build is built or failed; return the build."""
        for line in self.follow_build_log(name, number):
            if on_line:
                on_line(line)
        return self.get_build(name, number)

    def build(self, folder, name: str, entry: str, **kwargs) -> dict:
        """Upload and wait: the finished build (status built or failed)."""
        on_line = kwargs.pop("on_line", None)
        queued = self.upload_build(folder, name, entry, **kwargs).build
        return self.wait_build(name, queued["number"], on_line)

    def build_files(self, name: str, number: int) -> dict:
        return self.request("GET", f"/api/v1/models/{name}/builds/{number}/files")

    def diff(self, name: str, number: int, other: int) -> dict:
        return self.request("GET", f"/api/v1/models/{name}/builds/{number}/diff/{other}")

    def export_build(self, name: str, number: int, out: str | Path, on_bytes=None) -> int:
        written = 0
        with self.http.stream(
            "GET", f"/api/v1/models/{name}/builds/{number}/export", timeout=None
        ) as response:
            if response.status_code >= 400:
                response.read()
                self._decode(response)
            with open(out, "wb") as f:
                for chunk in response.iter_bytes(1 << 20):
                    f.write(chunk)
                    written += len(chunk)
                    if on_bytes:
                        on_bytes(len(chunk))
        return written

    def import_build(self, path: str | Path, model: str | None = None, on_upload=None) -> dict:
        data = {"model": model} if model else {}
        with open(path, "rb") as f:
            files = {"archive": (Path(path).name, _ProgressFile(f, on_upload), "application/zstd")}
            return self.request(
                "POST", "/api/v1/builds/import", data=data, files=files, timeout=None
            )

    # Deployments and predictions
    def deploy(self, name: str, build: int, **settings) -> dict:
        body = {"build": build, **{k: v for k, v in settings.items() if v is not None}}
        return self.request("POST", f"/api/v1/models/{name}/deployments", json=body)

    def deployments(self, name: str, limit: int | None = None) -> dict:
        return self.request(
            "GET", f"/api/v1/models/{name}/deployments", params=_params(limit=limit)
        )

    def deployment(self, name: str, deployment_id: int | str = "current") -> dict:
        return self.request("GET", f"/api/v1/models/{name}/deployments/{deployment_id}")

    def wait_deployment(
        self, name: str, deployment_id: int, timeout: float = 600, on_status=None
    ) -> dict:
        """Poll until the deployment is deployed, failed or stopped; return it."""
        import time

        deadline, seen = time.monotonic() + timeout, None
        while True:
            found = self.deployment(name, deployment_id)
            if on_status and found["status"] != seen:
                on_status(found)
                seen = found["status"]
            if found["status"] in ("deployed", "failed", "stopped") or time.monotonic() > deadline:
                return found
            time.sleep(0.1)

    def wait_candidate(
        self, name: str, deployment_id: int, timeout: float = 600, on_status=None
    ) -> dict:
        """Poll until a candidate serves its share (its event candidate.ready), or failed or
        stopped; return it."""
        import time

        deadline, seen = time.monotonic() + timeout, None
        while True:
            found = self.deployment(name, deployment_id)
            if on_status and found["status"] != seen:
                on_status(found)
                seen = found["status"]
            ready = any(e["kind"] == "candidate.ready" for e in found["events"])
            if ready or found["status"] != "candidate" or time.monotonic() > deadline:
                return found
            time.sleep(0.1)

    def traffic(self, name: str) -> dict:
        """The split now: the candidate, the traffic, each build's share and live figures."""
        return self.request("GET", f"/api/v1/models/{name}/deployments/current/traffic")

    def set_traffic(self, name: str, candidate_percent: float) -> dict:
        return self.request(
            "PATCH",
            f"/api/v1/models/{name}/deployments/current/traffic",
            json={"candidate_percent": candidate_percent},
        )

    def promote(self, name: str, if_replay_matches: int | None = None) -> dict:
        body = {"if_replay_matches": if_replay_matches} if if_replay_matches is not None else {}
        return self.request("POST", f"/api/v1/models/{name}/promote", json=body)

    def abort(self, name: str) -> dict:
        return self.request("POST", f"/api/v1/models/{name}/abort")

    def scale(self, name: str, replicas: int) -> dict:
        return self.request(
            "PATCH", f"/api/v1/models/{name}/deployments/current", json={"replicas": replicas}
        )

    def rollback(
        self, name: str, to_build: int | None = None, allow_breaking: bool = False
    ) -> dict:
        body = {"to_build": to_build} if to_build else {}
        if allow_breaking:
            body["allow_breaking"] = True
        return self.request("POST", f"/api/v1/models/{name}/rollback", json=body)

    def stop(self, name: str) -> dict:
        return self.request("POST", f"/api/v1/models/{name}/stop")

    def restart(self, name: str) -> dict:
        return self.request("POST", f"/api/v1/models/{name}/restart")

    def wait_restart(self, name: str, started: dict, timeout: float = 600, on_event=None) -> dict:
        """Poll until the restart that answered ``started`` has ended (its deployment's event
        ``restarted`` or ``restart_failed``, or the deployment stopped); return the deployment."""
        import time

        deadline, seen = time.monotonic() + timeout, len(started["events"])
        while True:
            found = self.deployment(name, started["id"])
            new, seen = found["events"][seen:], len(found["events"])
            for event in new:
                if on_event:
                    on_event(event)
                if event["kind"] in ("restarted", "restart_failed"):
                    return found
            if found["status"] in ("failed", "stopped") or time.monotonic() > deadline:
                return found
            time.sleep(0.1)

    def replicas(self, name: str) -> dict:
        return self.request("GET", f"/api/v1/models/{name}/replicas")

    def replica_logs(self, name: str, replica_id: str, stream: str = "stdout") -> str:
        response = self.http.get(
            f"/api/v1/models/{name}/replicas/{replica_id}/logs", params={"stream": stream}
        )
        if response.status_code >= 400:
            self._decode(response)
        return response.text

    def follow_replica_logs(self, name: str, replica_id: str, stream: str = "stdout"):
        with self.http.stream(
            "GET",
            f"/api/v1/models/{name}/replicas/{replica_id}/logs",
            params={"stream": stream, "follow": "1"},
            timeout=None,
        ) as response:
            if response.status_code >= 400:
                response.read()
                self._decode(response)
            yield from response.iter_text()

    def predict(self, name: str, body: Any, key: str | None = None) -> Any:
        """Call a model: `body` is the function's arguments; returns its result."""
        return self.call(name, body, key).result

    def call(self, name: str, body: Any, key: str | None = None) -> Prediction:
        """`predict`, with what the server said of the answer: its request id (for
        `prediction_metrics`, `track_delayed_metrics`), build, digest and replica."""
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        response = self.http.post(f"/models/{name}/predict", json=body, headers=headers)
        result = self._decode(response)
        build = response.headers.get("x-model-build")
        return Prediction(
            result,
            response.headers.get("x-request-id", ""),
            int(build) if build and build.isdigit() else None,
            response.headers.get("x-model-digest"),
            response.headers.get("x-replica-id"),
        )

    # Monitoring and tracked metrics
    def metrics(self, name: str, since: str | None = None, step: int | None = None) -> dict:
        """The monitoring series: requests, errors, latency percentiles per build."""
        return self.request(
            "GET", f"/api/v1/models/{name}/metrics", params=_params(since=since, step=step)
        )

    def captures(
        self, name: str, build: int, limit: int | None = None, cursor: str | None = None
    ) -> dict:
        """Requests and answers the deployment of a build recorded (capture_percent), newest
        first: a page."""
        return self.request(
            "GET",
            f"/api/v1/models/{name}/builds/{build}/captures",
            params=_params(limit=limit, cursor=cursor),
        )

    # Replays (deployer and admin)
    def replay(
        self,
        name: str,
        from_build: int,
        to_build: int,
        since: str = "1h",
        until: str | None = None,
        max_requests: int | None = None,
        rtol: float | None = None,
        atol: float | None = None,
        source: str | None = None,
    ) -> dict:
        """Start replaying a window of `from_build`'s captured requests on `to_build`: the
        report, running (`wait_replay` waits for it)."""
        body = {"from_build": from_build, "to_build": to_build, "since": since}
        extra = {
            "until": until,
            "max_requests": max_requests,
            "rtol": rtol,
            "atol": atol,
            "source": source,
        }
        body |= {k: v for k, v in extra.items() if v is not None}
        return self.request("POST", f"/api/v1/models/{name}/replays", json=body)

    def replay_report(self, name: str, report_id: int) -> dict:
        return self.request("GET", f"/api/v1/models/{name}/replays/{report_id}")

    def replays(
        self,
        name: str,
        build: int | None = None,
        limit: int | None = None,
        cursor: str | None = None,
    ) -> dict:
        """The model's replay reports, newest first (`build`: those from or to it): a page."""
        return self.request(
            "GET",
            f"/api/v1/models/{name}/replays",
            params=_params(build=build, limit=limit, cursor=cursor),
        )

    def wait_replay(self, name: str, report_id: int, timeout: float = 3600) -> dict:
        """Poll until the report is done or failed; return it."""
        import time

        deadline = time.monotonic() + timeout
        while True:
            found = self.replay_report(name, report_id)
            if found["status"] != "running" or time.monotonic() > deadline:
                return found
            time.sleep(0.2)

    def prediction_metrics(self, name: str, request_id: str) -> dict:
        """What `track_metric` recorded for one prediction (by its X-Request-Id)."""
        return self.request("GET", f"/api/v1/models/{name}/predictions/{request_id}/metrics")

    def track_delayed_metrics(self, name: str, request_id: str, metrics: dict) -> dict:
        """Add metrics to a past prediction later (ground truth), as Cloudera's
        track_delayed_metrics."""
        return self.request(
            "POST",
            f"/api/v1/models/{name}/predictions/{request_id}/metrics",
            json={"metrics": metrics},
        )

    def read_metrics(
        self,
        name: str,
        metric: str | None = None,
        since: str | None = None,
        until: str | None = None,
    ) -> dict:
        """Tracked metrics over a time range, as Cloudera's read_metrics."""
        return self.request(
            "GET",
            f"/api/v1/models/{name}/metrics/tracked",
            params=_params(name=metric, since=since, until=until),
        )


def _params(**values) -> dict:
    return {k: v for k, v in values.items() if v is not None}


class _ProgressFile:
    """A file whose reads report progress (for streaming uploads)."""

    def __init__(self, f, progress):
        self._f, self._progress = f, progress

    def read(self, size: int = -1) -> bytes:
        data = self._f.read(size)
        if self._progress and data:
            self._progress(len(data))
        return data

    def __getattr__(self, name):
        return getattr(self._f, name)


def git_commit(folder: Path) -> str | None:
    import subprocess

    try:
        out = subprocess.run(
            ["git", "-C", str(folder), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 and out.stdout.strip() else None


def _build_fields(
    entry: str, requirements, python, example_input, example_output, message, labels, commit
) -> dict[str, str]:
    fields = {"entrypoint": entry, "message": message or ""}
    optional = {"requirements": requirements, "python": python, "git_commit": commit}
    fields.update({k: v for k, v in optional.items() if v})
    for key, value in (("example_input", example_input), ("example_output", example_output)):
        if value is not None:
            fields[key] = value if isinstance(value, str) else msgspec.json.encode(value).decode()
    if labels:
        fields["labels"] = msgspec.json.encode(labels).decode()
    return fields
