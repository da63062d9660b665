"""The sandbox's policies and filter, as data: what each confined program may read, write, reach."""

from __future__ import annotations

from pathlib import Path

import pytest
from modelport.runtime import sandbox
from modelport.runtime.sandbox import Policy, seccomp_program
from modelport.sandboxing import (
    DEVICES,
    SYSTEM_READ,
    Sandbox,
    index_ports,
    inspect_policy,
    replica_policy,
    uv_policy,
)
from modelport.settings import SettingError, Settings

DATA = Path("/srv/modelport-data")
PROJECT = DATA / "projects" / "ab12"
RUNTIME = DATA / "runtime" / "cd34"
TMP = DATA / "run" / "tmp" / "m-1-1-beef"
PYTHON = "/nonexistent/python-prefix/bin/python3.11"


def _under(path: str, folder: Path) -> bool:
    return Path(path) == folder or folder in Path(path).parents


def test_a_replica_reads_its_own_folders_and_nothing_else_of_the_data_dir():
    policy = replica_policy(
        python=PYTHON, project=PROJECT, runtime_dir=RUNTIME, tmp=TMP, network=False
    )
    read_in_data = sorted(p for p in policy.read if _under(p, DATA))
    assert read_in_data == sorted([str(PROJECT), str(RUNTIME)])
    assert [p for p in policy.write if _under(p, DATA)] == [str(TMP)]
    assert "/nonexistent/python-prefix" in policy.read  # its interpreter's installation
    assert policy.connect == ()  # no network but the inherited pipe
    assert set(DEVICES) <= set(policy.write)


def test_network_true_means_any_network_and_the_inspect_step_has_none():
    kwargs = dict(python=PYTHON, project=PROJECT, runtime_dir=RUNTIME, tmp=TMP)
    assert replica_policy(network=True, **kwargs).connect is None
    assert inspect_policy(**kwargs).connect == ()


def test_the_system_paths_leave_out_secrets_and_other_processes():
    for path in (
        "/etc",
        "/etc/ssl",
        "/etc/ssl/private",
        "/etc/shadow",
        "/proc",
        "/dev",
        "/dev/shm",
        "/sys",
        "/root",
        "/home",
        "/tmp",
        "/var",
        "/run",
    ):
        assert path not in SYSTEM_READ, path
    assert not [p for p in SYSTEM_READ if p.startswith(("/proc/self", "/proc/1"))]
    assert "/etc/ssl/certs" in SYSTEM_READ and "/usr" in SYSTEM_READ


def test_uv_gets_its_work_folders_and_the_index_port():
    policy = uv_policy(
        uv="/opt/uv/bin/uv", read=[PROJECT], write=[DATA / ".build-x"], ports=[443, 443, 8080]
    )
    assert "/opt/uv/bin" in policy.read and str(PROJECT) in policy.read
    assert str(DATA / ".build-x") in policy.write
    assert policy.connect == (443, 8080)
    assert uv_policy(uv="/opt/uv/bin/uv", read=[], write=[], ports=None).connect == ()


@pytest.mark.parametrize(
    "index_url, find_links, no_index, env, ports",
    [
        (None, [], False, {}, (443,)),  # uv's default: PyPI
        ("http://127.0.0.1:3141/simple", [], False, {}, (3141,)),
        (None, [], False, {"UV_DEFAULT_INDEX": "http://mirror:8080/simple"}, (8080,)),
        (
            None,
            [],
            False,
            {
                "PIP_INDEX_URL": "https://idx/simple",
                "PIP_EXTRA_INDEX_URL": "http://extra:81/simple",
            },
            (81, 443),
        ),
        (None, [], False, {"UV_INDEX": "internal=http://idx:5000/simple"}, (443, 5000)),
        (None, ["/opt/wheels"], True, {}, None),  # local folders only: no network
        (None, ["https://host/wheels/"], True, {"HTTPS_PROXY": "http://proxy:3128"}, (443, 3128)),
        (None, [], True, {"HTTPS_PROXY": "http://proxy:3128"}, None),  # a proxy alone needs nothing
    ],
)
def test_index_ports(index_url, find_links, no_index, env, ports):
    assert index_ports(index_url, find_links, no_index, env) == ports


def test_the_policy_goes_through_the_command_line():
    policy = Policy(read=("/a b", "/c"), write=("/d",), connect=(443, 80))
    assert Policy.decode(policy.encode()) == policy
    assert Policy.decode(Policy(connect=None).encode()).connect is None
    assert Policy.decode(Policy().encode()) == Policy()
    with pytest.raises(ValueError):
        Policy(read=("/bad\npath",)).encode()


def test_handled_rights_per_landlock_abi():
    assert sandbox.handled_fs(1) == (1 << 13) - 1
    assert (
        sandbox.handled_fs(3) & sandbox.FS_TRUNCATE
        and not sandbox.handled_fs(2) & sandbox.FS_TRUNCATE
    )
    assert sandbox.handled_fs(5) & sandbox.FS_IOCTL_DEV
    assert sandbox.handled_net(3, ()) == 0  # no TCP rules before ABI 4 (seccomp covers it)
    assert sandbox.handled_net(4, ()) == sandbox.NET_BIND_TCP | sandbox.NET_CONNECT_TCP
    assert sandbox.handled_net(7, None) == 0  # any network
    assert sandbox.scopes(5) == 0 and sandbox.scopes(6) == 3


@pytest.mark.parametrize("machine", ["x86_64", "aarch64"])
@pytest.mark.parametrize("network", [True, False])
def test_the_seccomp_filter_is_well_formed(machine, network):
    rows = seccomp_program(machine, network)
    assert len(rows) < 256
    for i, (code, jt, jf, _k) in enumerate(rows):
        if code & 0x07 == 0x05:  # a jump: forward and inside the program
            assert jt >= 0 and i + jt + 1 < len(rows) and i + jf + 1 < len(rows)
    assert rows[-1][0] == 0x06  # ends with a return
    socket_nr = {"x86_64": 41, "aarch64": 198}[machine]
    tested = {k for code, _, _, k in rows if code == 0x15}
    assert (socket_nr in tested) is (not network)
    ptrace_nr = {"x86_64": 101, "aarch64": 117}[machine]
    assert ptrace_nr in tested


def test_the_data_dir_under_a_granted_path_is_found(tmp_path):
    box = Sandbox(tmp_path / "data", enabled=False)
    assert box.exposed(["/usr", str(tmp_path), "/opt"]) == [str(tmp_path)]
    assert box.exposed(SYSTEM_READ) == []
    assert box.command("python", Policy(), ["a", "b"]) == ["a", "b"]  # off: as given


def test_modelport_sandbox_setting(monkeypatch, tmp_path):
    monkeypatch.setenv("MODELPORT_HOME", str(tmp_path))
    for value, on in (("off", False), ("0", False), ("on", True), ("", True)):
        monkeypatch.setenv("MODELPORT_SANDBOX", value)
        assert Settings.from_env().sandbox is on
    monkeypatch.setenv("MODELPORT_SANDBOX", "maybe")
    with pytest.raises(SettingError, match="MODELPORT_SANDBOX"):
        Settings.from_env()


def test_a_ray_node_confines_its_worker_as_a_local_replica_or_starts_nothing(tmp_path):
    """serving/ray_host.py on a node: the same launcher and policy as a local replica (its own
    project, environment and runtime read; its temp dir under the node's folder written); a
    node whose kernel lacks a protection the server's sandbox lists refuses, naming it."""
    from modelport.serving.materialise import NodeBuild
    from modelport.serving.ray_host import ReplicaHost

    here = tmp_path / "nodes" / "127.0.0.3"
    built = NodeBuild(
        python=PYTHON,
        project=str(here / "projects" / "ab12"),
        entry="predict.py:predict",
        runtime=str(here / "runtime" / "cd34"),
        cached=True,
    )
    job = {"rid": "m-1-1-beef", "sandbox": sandbox.probe(), "network": False}
    argv, env = ReplicaHost()._confined(here, built, job, ["worker"], {"PATH": "/usr/bin"})
    tmp = here / "run" / "tmp" / "m-1-1-beef"
    assert tmp.is_dir() and env["HOME"] == env["TMPDIR"] == str(tmp)
    assert argv[:3] == [PYTHON, "-I", "-S"] and argv[-2:] == ["--", "worker"]
    policy = Policy.decode(argv[argv.index("--policy") + 1])
    assert policy == replica_policy(
        python=PYTHON,
        project=Path(built.project),
        runtime_dir=Path(built.runtime),
        tmp=tmp,
        network=False,
    )
    lacking = {**job, "sandbox": [*job["sandbox"], "landlock_future"]}
    with pytest.raises(RuntimeError, match="lacks landlock_future of the server's sandbox"):
        ReplicaHost()._confined(here, built, lacking, ["worker"], {})


def test_modelport_replica_tls_setting(monkeypatch, tmp_path):
    monkeypatch.setenv("MODELPORT_HOME", str(tmp_path))
    for value, on in (("on", True), ("1", True), ("off", False), ("", False)):
        monkeypatch.setenv("MODELPORT_REPLICA_TLS", value)
        assert Settings.from_env().replica_tls is on
    monkeypatch.setenv("MODELPORT_REPLICA_TLS", "sometimes")
    with pytest.raises(SettingError, match="MODELPORT_REPLICA_TLS must be on or off"):
        Settings.from_env()
