"""Two real `modelport serve` on one PostgreSQL registry and one S3 bucket (radosgw), each on its
own data dir and port: what one server changes, the other learns from the registry (LISTEN/NOTIFY)
without a restart — keys, tokens, models, deployments, rollbacks, stops."""

from __future__ import annotations

import contextlib
import os
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest

from tests.conftest import S3_CREDENTIALS, pack_bytes, upload_build, wait_build, write_project

ADDER = {"predict.py": "def predict(a: float, b: float) -> float:\n    return a + b\n"}
TIMES = {"predict.py": "def predict(a: float, b: float) -> float:\n    return a * b\n"}

pytestmark = pytest.mark.slow


@pytest.fixture
def pair(offline_server, postgres, pg_url, s3_server, tmp_path):
    """Servers a and b: the same registry, bucket and sealing key; a started first."""
    key_file = tmp_path / "sealing.key"
    key_file.write_bytes(os.urandom(32))
    key_file.chmod(0o600)
    store_url = s3_server.url(s3_server.prefix())
    servers = []
    for node in ("a", "b"):
        srv = offline_server()
        srv.env.update(S3_CREDENTIALS)
        srv.env["MODELPORT_DATABASE_URL"] = pg_url
        srv.env["MODELPORT_STORE_URL"] = store_url
        srv.env["MODELPORT_SECRET_KEY_FILE"] = str(key_file)
        srv.env["MODELPORT_NODE"] = node
        servers.append(srv)
    a, b = servers
    a.start(timeout=90)
    b.start(timeout=90)
    b.token = a.token  # the first start's admin token, in a's data dir: the registry's
    return a, b


def predict(srv, name: str, key: str, body: dict | None = None) -> httpx.Response:
    return httpx.post(
        f"{srv.url}/models/{name}/predict",
        json=body or {"a": 2, "b": 3},
        headers={"Authorization": f"Bearer {key}"},
        timeout=30,
    )


def until(check, timeout: float = 60.0, every: float = 0.02):
    """Poll ``check`` until it returns something true; (that value, seconds it took)."""
    start = time.monotonic()
    while True:
        found = check()
        if found:
            return found, time.monotonic() - start
        if time.monotonic() - start > timeout:
            raise TimeoutError(f"not within {timeout} s")
        time.sleep(every)


def build(srv, tmp_path: Path, name: str, files: dict[str, str]) -> int:
    c = srv.client()
    folder = write_project(tmp_path / f"{name}-{len(list(tmp_path.iterdir()))}", files)
    made = upload_build(c, name, pack_bytes(folder), entrypoint="predict.py:predict")
    assert made.status_code == 202, made.text
    number = made.json()["number"]
    assert wait_build(c, name, number)["status"] == "built"
    return number


def deploy(srv, name: str, number: int, **settings) -> int:
    made = srv.client().post(
        f"/api/v1/models/{name}/deployments", json={"build": number, **settings}
    )
    assert made.status_code == 202, made.text
    wait_status(srv, name, made.json()["id"], "deployed")
    return made.json()["id"]


def wait_status(srv, name: str, deployment_id: int, status: str, timeout: float = 120) -> dict:
    def check():
        found = srv.client().get(f"/api/v1/models/{name}/deployments/{deployment_id}").json()
        if found["status"] in ("deployed", "failed", "stopped"):
            assert found["status"] == status, found
            return found
        return None

    return until(check, timeout, every=0.1)[0]


def replicas(srv, name: str) -> list[dict]:
    found = srv.client().get(f"/api/v1/models/{name}/replicas").json()
    return found["items"] if isinstance(found, dict) else found


def test_a_key_rotated_or_a_token_revoked_on_one_server_is_refused_on_the_other(pair):
    a, b = pair
    made = a.client().post("/api/v1/models", json={"name": "m"})
    assert made.status_code == 201
    old = made.json()["access_key"]
    # b learns of the model a made: its key is known there (no deployment: 404 not_deployed,
    # not 401 or model.not_found)
    answer, _ = until(lambda: (r := predict(b, "m", old)).status_code == 404 and r)
    assert answer.json()["error"]["code"] == "model.not_deployed"

    new = a.client().post("/api/v1/models/m/access-key/rotate").json()["access_key"]
    refused, took = until(lambda: (r := predict(b, "m", old)).status_code == 401 and r)
    assert refused.json()["error"]["code"] == "auth.invalid"
    print(f"key rotated on a, refused on b after {took * 1000:.0f} ms")
    assert predict(b, "m", new).status_code == 404  # the new key is known there

    token = a.client().post("/api/v1/tokens", json={"name": "ci", "role": "viewer"}).json()
    with b.client(token["token"]) as viewer:
        until(lambda: viewer.get("/api/v1/models").status_code == 200)
        assert a.client().delete(f"/api/v1/tokens/{token['id']}").status_code == 200
        gone, took = until(lambda: (r := viewer.get("/api/v1/models")).status_code == 401 and r)
    assert gone.json()["error"]["code"] == "auth.invalid"
    print(f"token revoked on a, refused on b after {took * 1000:.0f} ms")

    assert a.client().delete("/api/v1/models/m").status_code == 204
    lost, _ = until(lambda: (r := predict(b, "m", new)).status_code == 404 and r)
    assert lost.json()["error"]["code"] == "model.not_found"


def test_what_one_server_deploys_rolls_back_and_stops_the_other_serves(pair, tmp_path):
    a, b = pair
    key = a.client().post("/api/v1/models", json={"name": "calc"}).json()["access_key"]
    first = build(a, tmp_path, "calc", ADDER)
    second = build(a, tmp_path, "calc", TIMES)
    deploy(a, "calc", first)
    served, took = until(lambda: (r := predict(b, "calc", key)).status_code == 200 and r)
    assert served.json() == 5.0 and served.headers["x-model-build"] == str(first)
    print(f"deployed on a, served on b {took * 1000:.0f} ms after a's deployment was deployed")

    deploy(a, "calc", second, replicas=2)  # spread: one on each server
    until(lambda: predict(b, "calc", key).json() == 6.0)
    until(lambda: [len(replicas(srv, "calc")) for srv in (a, b)] == [1, 1])

    started = time.monotonic()
    rolled = a.client().post("/api/v1/models/calc/rollback", json={})
    assert rolled.status_code == 202, rolled.text
    _, took = until(lambda: predict(a, "calc", key).json() == 5.0, every=0.005)
    print(f"rollback called on a, a serves the old build {time.monotonic() - started:.3f} s later")
    _, took = until(lambda: predict(b, "calc", key).json() == 5.0, every=0.005)
    print(f"rollback called on a, b serves the old build {time.monotonic() - started:.3f} s later")
    wait_status(a, "calc", rolled.json()["id"], "deployed")

    # a restart through a renews b's share too, and says restarted once both are renewed
    until(lambda: [len(replicas(srv, "calc")) for srv in (a, b)] == [1, 1])
    before = {srv.port: {(r["id"], r["pid"]) for r in replicas(srv, "calc")} for srv in (a, b)}
    with answering((a, b), "calc", key) as answers:
        restarted = a.client().post("/api/v1/models/calc/restart")
        assert restarted.status_code == 202, restarted.text
        done = until(lambda: restart_ended(a, "calc", restarted.json()["id"]), 120, every=0.1)[0]
    assert done["kind"] == "restarted", done
    assert answers and set(answers) == {(200, first)}  # answered throughout, by the same build
    for srv in (a, b):  # new replicas on both servers (new ids, new processes)
        now = {(r["id"], r["pid"]) for r in replicas(srv, "calc")}
        assert len(now) == 1 and not now & before[srv.port], (srv.port, before, now)
    events = a.client().get(f"/api/v1/models/calc/deployments/{rolled.json()['id']}").json()
    kinds = [e["kind"] for e in events["events"]]
    renewed = [e["detail"] for e in events["events"] if e["kind"] == "server.restarted"]
    assert [(d["server"], d["replicas"]) for d in renewed] == [("b", 1)]
    assert kinds.index("restarting") < kinds.index("server.restarted") < kinds.index("restarted")

    assert a.client().post("/api/v1/models/calc/stop").status_code == 200
    stopped, _ = until(lambda: (r := predict(b, "calc", key)).status_code == 404 and r)
    assert stopped.json()["error"]["code"] == "model.not_deployed"


def restart_ended(srv, name: str, deployment_id: int) -> dict | None:
    """The restart's last event once it ended (restarted, restart_failed), else None."""
    found = srv.client().get(f"/api/v1/models/{name}/deployments/{deployment_id}").json()
    ended = [e for e in found["events"] if e["kind"] in ("restarted", "restart_failed")]
    return ended[-1] if ended else None


@contextlib.contextmanager
def answering(servers, name: str, key: str, check=None):
    """Predictions through each server in turn until the block ends: the list of (status,
    build) answers. ``check(status, build)`` runs on each as it comes; what it raises is raised
    when the block ends."""
    import threading

    answers: list[tuple[int, int | None]] = []
    errors: list[BaseException] = []
    stop = threading.Event()

    def load() -> None:
        with httpx.Client(headers={"Authorization": f"Bearer {key}"}, timeout=30) as http:
            while not stop.is_set() and not errors:
                for srv in servers:
                    r = http.post(f"{srv.url}/models/{name}/predict", json={"a": 2, "b": 3})
                    build = int(r.headers["x-model-build"]) if r.status_code == 200 else None
                    try:
                        if check is not None:
                            check(r.status_code, build)
                    except BaseException as exc:
                        errors.append(exc)
                    answers.append((r.status_code, build))

    thread = threading.Thread(target=load)
    thread.start()
    try:
        yield answers
    finally:
        stop.set()
        thread.join()
    if errors:
        raise errors[0]


SLOW = {
    "predict.py": "import os\nimport time\n\nif os.environ.get('SLOW_BOOT'):\n"
    "    time.sleep(120)\n\n\ndef predict(a: float, b: float) -> float:\n    return a + b\n"
}


def leader(postgres, pg_url) -> tuple[str, int]:
    node, term = postgres.psql(
        "SELECT node, term FROM leadership", pg_url.rpartition("/")[2]
    ).split("|")
    return node, int(term)


def test_the_controller_killed_under_load_another_takes_over_and_nothing_is_lost(
    pair, postgres, pg_url, tmp_path
):
    import signal
    import threading

    a, b = pair
    assert until(lambda: leader(postgres, pg_url)[0] == "a")[0]  # a started first
    key = a.client().post("/api/v1/models", json={"name": "calc"}).json()["access_key"]
    number = build(a, tmp_path, "calc", SLOW)
    serving = deploy(a, "calc", number, replicas=2)  # spread: one on each server
    until(lambda: [len(replicas(srv, "calc")) for srv in (a, b)] == [1, 1])
    # a rolls out a deployment that cannot be ready before a dies (its replicas boot for 120 s)
    slow = a.client().post(
        "/api/v1/models/calc/deployments",
        json={"build": number, "replicas": 2, "env": {"SLOW_BOOT": "1"}},
    )
    assert slow.status_code == 202
    until(
        lambda: (
            a.client().get(f"/api/v1/models/calc/deployments/{slow.json()['id']}").json()["status"]
            == "deploying"
        )
    )

    answers: list[int] = []
    stop = threading.Event()

    def load() -> None:
        with httpx.Client(timeout=30) as http:
            while not stop.is_set():
                r = http.post(
                    f"{b.url}/models/calc/predict",
                    json={"a": 1, "b": 1},
                    headers={"Authorization": f"Bearer {key}"},
                )
                answers.append(r.status_code)

    threads = [threading.Thread(target=load) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        time.sleep(0.5)
        killed = time.monotonic()
        a.stop(signal.SIGKILL)
        (_, term), took_lead = until(
            lambda: (found := leader(postgres, pg_url))[0] == "b" and found, timeout=30
        )
        assert term == 2
        settled = wait_status(b, "calc", slow.json()["id"], "failed", timeout=60)
        took_settle = time.monotonic() - killed
        time.sleep(0.5)
    finally:
        stop.set()
        for t in threads:
            t.join()
    print(
        f"a killed: b leads after {took_lead:.2f} s, a's half-way deployment settled "
        f"{took_settle:.2f} s after the kill; {len(answers)} predictions on b meanwhile"
    )
    assert set(answers) == {200}, sorted(set(answers))  # b kept serving throughout
    assert "server a, which rolled it out, is gone" in settled["reason"]
    until(lambda: len(replicas(b, "calc")) == 2)  # a's share of what serves now runs on b
    current = b.client().get("/api/v1/models/calc").json()
    assert current["deployment"]["id"] == serving  # the one before still serves
    again = deploy(b, "calc", number, replicas=2)  # and b manages alone now
    assert b.client().get("/api/v1/models/calc").json()["deployment"]["id"] == again
    assert predict(b, "calc", key).json() == 5.0


def test_a_server_without_replicas_of_a_model_forwards_its_predictions_to_one_with(pair, tmp_path):
    import signal

    a, b = pair
    key = a.client().post("/api/v1/models", json={"name": "one"}).json()["access_key"]
    deploy(a, "one", build(a, tmp_path, "one", ADDER))  # 1 replica: on one of the two
    counts, _ = until(
        lambda: (n := [len(replicas(s, "one")) for s in (a, b)]) in ([1, 0], [0, 1]) and n
    )
    host, other = (a, b) if counts == [1, 0] else (b, a)
    answer, _ = until(lambda: (r := predict(other, "one", key)).status_code == 200 and r)
    assert answer.json() == 5.0
    assert answer.headers["x-replica-id"] == replicas(host, "one")[0]["id"]  # the host's headers
    assert answer.headers["x-model-build"] == "1"
    looped = httpx.post(  # a forwarded request is never forwarded again
        f"{other.url}/models/one/predict",
        json={"a": 1, "b": 1},
        headers={"Authorization": f"Bearer {key}", "X-Modelport-Forwarded": "elsewhere"},
        timeout=30,
    )
    assert looped.status_code == 503 and looped.json()["error"]["code"] == "model.unavailable"

    host.stop(signal.SIGKILL)  # the forwarding target dies
    seen: set[tuple[int, str]] = set()

    def served_here():
        r = predict(other, "one", key)
        seen.add((r.status_code, r.json()["error"]["code"] if r.status_code != 200 else ""))
        return (
            r.status_code == 200
            and r.headers["x-replica-id"] != answer.headers["x-replica-id"]
            and r
        )

    back, took = until(served_here, timeout=90, every=0.05)
    print(
        f"forwarding target killed: {other.env['MODELPORT_NODE']} serves 'one' itself "
        f"{took:.2f} s later; answers meanwhile: {sorted(seen)}"
    )
    assert back.json() == 5.0
    assert seen <= {(200, ""), (503, "model.unavailable")}  # a clear 503 while it moves
    assert len(replicas(other, "one")) == 1


def test_two_servers_creating_or_deploying_one_model_at_once_one_wins(pair, tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    a, b = pair
    with ThreadPoolExecutor(2) as pool:
        made = list(
            pool.map(lambda srv: srv.client().post("/api/v1/models", json={"name": "twin"}), (a, b))
        )
    assert sorted(r.status_code for r in made) == [201, 409]
    lost = next(r for r in made if r.status_code == 409)
    assert lost.json()["error"]["code"] == "model.exists"
    key = next(r for r in made if r.status_code == 201).json()["access_key"]
    number = build(a, tmp_path, "twin", ADDER)
    with ThreadPoolExecutor(2) as pool:
        started = list(
            pool.map(
                lambda srv: srv.client().post(
                    "/api/v1/models/twin/deployments", json={"build": number}
                ),
                (a, b),
            )
        )
    assert [r.status_code for r in started] == [202, 202]
    ids = [r.json()["id"] for r in started]

    def settled():
        found = [
            a.client().get(f"/api/v1/models/twin/deployments/{i}").json()["status"] for i in ids
        ]
        # (two reads: one switch may land between them; read again until they agree)
        done = all(s in ("deployed", "stopped", "failed") for s in found)
        return found if done and found.count("deployed") == 1 else None

    statuses, _ = until(settled, timeout=120, every=0.2)
    # one wins; the other made way (the registry holds one deployed deployment a model)
    winner = ids[statuses.index("deployed")]
    assert a.client().get("/api/v1/models/twin").json()["deployment"]["id"] == winner
    for srv in (a, b):
        until(lambda srv=srv: predict(srv, "twin", key).status_code == 200)


PLUS = {"predict.py": "def predict(a: float, b: float) -> float:\n    return a + b + 10\n"}


def builds_seen(srv, name: str, key: str, n: int = 40) -> Counter:
    """Which builds answered ``n`` predictions (each a 200)."""
    seen: Counter = Counter()
    with httpx.Client(
        base_url=srv.url, headers={"Authorization": f"Bearer {key}"}, timeout=30
    ) as c:
        for _ in range(n):
            r = c.post(f"/models/{name}/predict", json={"a": 2, "b": 3})
            assert r.status_code == 200, r.text
            seen[int(r.headers["x-model-build"])] += 1
    return seen


def wait_ready(srv, name: str, deployment_id: int) -> None:
    def ready():
        found = srv.client().get(f"/api/v1/models/{name}/deployments/{deployment_id}").json()
        assert found["status"] == "candidate", found
        return any(e["kind"] == "candidate.ready" for e in found["events"])

    until(ready, 120, every=0.1)


def test_a_canary_added_moved_promoted_or_aborted_on_one_server_the_other_follows(pair, tmp_path):
    a, b = pair
    key = a.client().post("/api/v1/models", json={"name": "can"}).json()["access_key"]
    one = build(a, tmp_path, "can", ADDER)
    two = build(a, tmp_path, "can", TIMES)
    three = build(a, tmp_path, "can", PLUS)
    url = "/api/v1/models/can"
    deploy(a, "can", one, replicas=2)  # spread: one replica on each server
    until(lambda: [len(replicas(s, "can")) for s in (a, b)] == [1, 1])

    started = time.monotonic()
    made = a.client().post(
        url + "/deployments", json={"build": two, "canary_percent": 50, "replicas": 2}
    )
    assert made.status_code == 202, made.text
    cand = made.json()
    wait_ready(a, "can", cand["id"])
    seen, _ = until(lambda: len(s := builds_seen(b, "can", key)) == 2 and s, 120, every=0.1)
    print(f"canary added on a, b serves both builds {time.monotonic() - started:.2f} s later")
    assert set(seen) == {one, two}
    split = builds_seen(b, "can", key, 200)
    print(f"b at 50 %: {dict(split)}")
    assert 50 <= split[two] <= 150  # about half of 200
    # b answers with the candidate's own replica: its build's answer
    assert a.client().get(url + "/deployments/current/traffic").status_code == 200

    moved = a.client().patch(url + "/deployments/current/traffic", json={"candidate_percent": 0})
    assert moved.status_code == 200, moved.text
    until(lambda: set(builds_seen(b, "can", key, 20)) == {one})
    assert builds_seen(b, "can", key, 100) == {one: 100}  # 0 % seen on b

    back = a.client().patch(url + "/deployments/current/traffic", json={"candidate_percent": 50})
    assert back.status_code == 200, back.text
    until(lambda: set(builds_seen(b, "can", key)) == {one, two})
    promoted = a.client().post(url + "/promote", json={})
    assert promoted.status_code == 200, promoted.text
    assert promoted.json()["status"] == "deployed"
    until(lambda: set(builds_seen(b, "can", key, 20)) == {two})
    assert builds_seen(b, "can", key, 100) == {two: 100}  # only the promoted build
    until(lambda: [len(replicas(s, "can")) for s in (a, b)] == [1, 1])  # old primary drained
    assert {r["build"] for s in (a, b) for r in replicas(s, "can")} == {two}

    made = a.client().post(
        url + "/deployments", json={"build": three, "canary_percent": 50, "replicas": 2}
    )
    assert made.status_code == 202, made.text
    wait_ready(a, "can", made.json()["id"])
    until(lambda: set(builds_seen(b, "can", key)) == {two, three}, 120, every=0.1)
    aborted = a.client().post(url + "/abort", json={})
    assert aborted.status_code == 200, aborted.text
    until(lambda: set(builds_seen(b, "can", key, 20)) == {two})
    assert builds_seen(b, "can", key, 100) == {two: 100}  # only the primary
    gone = a.client().get(f"{url}/deployments/{made.json()['id']}").json()
    assert gone["status"] == "stopped"


def test_a_rollout_switches_once_every_server_with_a_share_is_ready_or_fails_whole(pair, tmp_path):
    from modelport.serving.placement import shares

    a, b = pair
    # a model whose one replica is placed on b: a, which takes the calls, runs none of it
    name = next(
        n for n in (f"far{i}" for i in range(99)) if shares(n, 1, "spread", ["a", "b"])["b"]
    )
    key = a.client().post("/api/v1/models", json={"name": name}).json()["access_key"]
    first = build(a, tmp_path, name, ADDER)
    slow = build(
        a, tmp_path, name, {"predict.py": "import time\n\ntime.sleep(3)\n\n" + TIMES["predict.py"]}
    )
    marker = f"{b.data_dir}/"  # a build that cannot start on b (its files are under b's data dir)
    broken = build(
        a,
        tmp_path,
        name,
        {
            "predict.py": f"if {marker!r} in __file__:\n    raise RuntimeError('no GPU on this "
            "server')\n\n" + PLUS["predict.py"]
        },
    )
    deploy(a, name, first)
    until(lambda: [len(replicas(s, name)) for s in (a, b)] == [0, 1])
    url = f"/api/v1/models/{name}/deployments"

    # a build that boots for 3 s, deployed through a: the old build answers through both until
    # the registry says the new one is deployed, which it says once b's share is ready
    made = a.client().post(url, json={"build": slow})
    assert made.status_code == 202, made.text
    slow_id = made.json()["id"]

    def served_only_once_deployed(status: int, number: int | None) -> None:
        if number == slow:  # the new build answered: the registry says it serves already
            found = a.client().get(f"{url}/{slow_id}").json()
            assert found["status"] == "deployed", found

    with answering((a, b), name, key, served_only_once_deployed) as answers:
        wait_status(a, name, slow_id, "deployed")
        until(lambda: {n for _, n in answers[-4:]} == {slow}, 60)
    assert {s for s, _ in answers} == {200}, sorted(set(answers))
    assert (200, first) in answers  # the old build answered while the new one booted
    for srv in (a, b):
        assert builds_seen(srv, name, key, 20) == {slow: 20}
    history = a.client().get(f"{url}/{slow_id}").json()["events"]
    kinds = [e["kind"] for e in history]
    ready = [e["detail"] for e in history if e["kind"] == "server.ready"]
    assert ready == [{"server": "b", "replicas": 1}], history
    assert kinds.index("server.ready") < kinds.index("deployed"), kinds

    # a build whose replicas cannot start on b (2 replicas: one on each): a's starts, b's
    # fails; the deployment fails naming b, nothing switches anywhere, a drops its new replica
    made = a.client().post(url, json={"build": broken, "replicas": 2})
    assert made.status_code == 202, made.text
    with answering((a, b), name, key) as answers:
        failed = wait_status(a, name, made.json()["id"], "failed")
    assert set(answers) == {(200, slow)}, sorted(set(answers))  # the old build, throughout
    assert failed["reason"].startswith("server b could not start its share (1 replica): ")
    assert "no GPU on this server" in failed["reason"]
    assert "deployed" not in [e["kind"] for e in failed["events"]]
    assert a.client().get(f"/api/v1/models/{name}").json()["deployment"]["id"] == slow_id
    until(lambda: [len(replicas(s, name)) for s in (a, b)] == [0, 1])
    assert [r["build"] for r in replicas(b, name)] == [slow]
    for srv in (a, b):
        assert builds_seen(srv, name, key, 20) == {slow: 20}
