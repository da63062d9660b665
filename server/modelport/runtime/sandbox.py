"""Confine a process with what the Linux kernel offers: Landlock, a seccomp filter, no privileges.

    python -I -S -m modelport.runtime.sandbox exec --policy RULES --parent PID [--supervise] \
        -- ARGV...
    python -I -S -m modelport.runtime.sandbox probe

`exec` confines itself, then becomes ARGV (execve): the program runs confined from its first
instruction, so nothing of it (a `.pth` file of its environment, its imports) runs before. With
`--supervise` it forks ARGV confined and stays as its unconfined parent: when ARGV ends, or when
the server dies, every process ARGV left behind is killed (builds run uv this way). Either way the
program dies with the server (PR_SET_PDEATHSIG); `--parent` is the server's pid, to catch a
server that died before that was set. Exit 125: the confinement could not be applied (nothing ran).

Standard library only (`-S`: the environment's site-packages are not even on the path), and it
imports nothing else of modelport: it is copied into model environments with the runtime.
What each layer gives: see `apply`; which layers this kernel has: `probe`.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import stat
import struct
import sys

__all__ = ["Policy", "SandboxError", "apply", "main", "not_dumpable", "probe"]

EXIT_SANDBOX = 125
SIGKILL, SIGTERM = 9, 15  # (the signal module, and the enum it imports, cost a replica's start)


class Policy:
    """What a confined process may touch. ``read``: files and folders (with all beneath) it may
    read and execute; ``write``: folders it may also change, and files (devices) it may write;
    ``connect``: TCP ports it may connect to, ``None`` for any network, ``()`` for none at all
    (no socket can be made; the socket it inherited still works). Its own ``/proc/<pid>`` is
    always readable. A plain class with a line format of its own, not a msgspec Struct nor JSON:
    it is read before site-packages exist, at every replica start (json and dataclasses cost
    the launcher more than all the rest)."""

    __slots__ = ("connect", "read", "write")

    def __init__(
        self,
        read: tuple[str, ...] = (),
        write: tuple[str, ...] = (),
        connect: tuple[int, ...] | None = (),
    ) -> None:
        self.read, self.write = tuple(read), tuple(write)
        self.connect = None if connect is None else tuple(int(p) for p in connect)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Policy) and (self.read, self.write, self.connect) == (
            other.read,
            other.write,
            other.connect,
        )

    def __repr__(self) -> str:
        return f"Policy(read={self.read!r}, write={self.write!r}, connect={self.connect!r})"

    def encode(self) -> str:
        """One line per rule: ``r PATH``, ``w PATH``, ``c PORT`` or ``c any``."""
        paths = [*self.read, *self.write]
        if any("\n" in p for p in paths):
            raise ValueError("a path of a sandbox policy holds a newline")
        lines = [f"r {p}" for p in self.read] + [f"w {p}" for p in self.write]
        lines += ["c any"] if self.connect is None else [f"c {p}" for p in self.connect]
        return "\n".join(lines)

    @classmethod
    def decode(cls, text: str) -> Policy:
        rules: dict[str, list[str]] = {"r": [], "w": [], "c": []}
        for line in text.splitlines():
            kind, _, value = line.partition(" ")
            rules[kind].append(value)
        connect = None if "any" in rules["c"] else tuple(int(p) for p in rules["c"])
        return cls(tuple(rules["r"]), tuple(rules["w"]), connect)


class SandboxError(OSError):
    """A layer the kernel has could not be applied: the process must not go on unconfined."""


# -- the kernel's interface -----------------------------------------------------------------------

_ARCH = {"x86_64": 0xC000003E, "aarch64": 0xC00000B7}  # AUDIT_ARCH_*
_MACHINE = os.uname().machine if hasattr(os, "uname") else ""
_LINUX = sys.platform.startswith("linux") and _MACHINE in _ARCH

# Calls added since Linux 5.1 have one number on every architecture.
_UNIFIED = dict(
    landlock_create_ruleset=444,
    landlock_add_rule=445,
    landlock_restrict_self=446,
    clone3=435,
    pidfd_getfd=438,
    fsopen=430,
    fsconfig=431,
    fsmount=432,
    fspick=433,
    move_mount=429,
    open_tree=428,
    mount_setattr=442,
    io_uring_setup=425,
    io_uring_enter=426,
    io_uring_register=427,
)

# Syscall numbers: x86_64's own table, and the generic one that aarch64 uses.
_NR_BY_MACHINE = {
    "x86_64": dict(
        _UNIFIED,
        seccomp=317,
        capset=126,
        socket=41,
        clone=56,
        ptrace=101,
        process_vm_readv=310,
        process_vm_writev=311,
        kcmp=312,
        init_module=175,
        finit_module=313,
        delete_module=176,
        kexec_load=246,
        kexec_file_load=320,
        bpf=321,
        perf_event_open=298,
        userfaultfd=323,
        keyctl=250,
        add_key=248,
        request_key=249,
        mount=165,
        umount2=166,
        pivot_root=155,
        chroot=161,
        open_by_handle_at=304,
        name_to_handle_at=303,
        swapon=167,
        swapoff=168,
        reboot=169,
        unshare=272,
        setns=308,
        acct=163,
        quotactl=179,
        settimeofday=164,
        clock_settime=227,
        adjtimex=159,
        sethostname=170,
        setdomainname=171,
        iopl=172,
        ioperm=173,
    ),
    "aarch64": dict(
        _UNIFIED,
        seccomp=277,
        capset=91,
        socket=198,
        clone=220,
        ptrace=117,
        process_vm_readv=270,
        process_vm_writev=271,
        kcmp=272,
        init_module=105,
        finit_module=273,
        delete_module=106,
        kexec_load=104,
        kexec_file_load=294,
        bpf=280,
        perf_event_open=241,
        userfaultfd=282,
        keyctl=219,
        add_key=217,
        request_key=218,
        mount=40,
        umount2=39,
        pivot_root=41,
        chroot=51,
        open_by_handle_at=265,
        name_to_handle_at=264,
        swapon=224,
        swapoff=225,
        reboot=142,
        unshare=97,
        setns=268,
        acct=89,
        quotactl=60,
        settimeofday=170,
        clock_settime=112,
        adjtimex=171,
        sethostname=161,
        setdomainname=162,
    ),
}
_NR = _NR_BY_MACHINE.get(_MACHINE, {})

# Always refused (EPERM): reading or steering other processes, the kernel's own state (modules,
# mounts, keys, clocks, bpf), and io_uring, whose operations seccomp cannot see.
DENIED = (
    "ptrace",
    "process_vm_readv",
    "process_vm_writev",
    "kcmp",
    "pidfd_getfd",
    "init_module",
    "finit_module",
    "delete_module",
    "kexec_load",
    "kexec_file_load",
    "bpf",
    "perf_event_open",
    "userfaultfd",
    "keyctl",
    "add_key",
    "request_key",
    "mount",
    "umount2",
    "pivot_root",
    "chroot",
    "open_by_handle_at",
    "name_to_handle_at",
    "swapon",
    "swapoff",
    "reboot",
    "unshare",
    "setns",
    "fsopen",
    "fsconfig",
    "fsmount",
    "fspick",
    "move_mount",
    "open_tree",
    "mount_setattr",
    "io_uring_setup",
    "io_uring_enter",
    "io_uring_register",
    "acct",
    "quotactl",
    "settimeofday",
    "clock_settime",
    "adjtimex",
    "sethostname",
    "setdomainname",
    "iopl",
    "ioperm",
)
CLONE_NEW_NAMESPACES = 0x7E020000  # CLONE_NEWNS|NEWCGROUP|NEWUTS|NEWIPC|NEWUSER|NEWPID|NEWNET

PR_SET_PDEATHSIG, PR_SET_DUMPABLE, PR_SET_SECCOMP = 1, 4, 22
PR_CAPBSET_READ, PR_CAPBSET_DROP, PR_SET_CHILD_SUBREAPER = 23, 24, 36
PR_SET_NO_NEW_PRIVS, PR_GET_NO_NEW_PRIVS, PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL = 38, 39, 47, 4
SECCOMP_MODE_FILTER, SECCOMP_GET_ACTION_AVAIL = 2, 2
SECCOMP_RET_ALLOW, SECCOMP_RET_ERRNO = 0x7FFF0000, 0x00050000

# Landlock (include/uapi/linux/landlock.h): what each ABI version handles.
FS_EXECUTE, FS_WRITE_FILE, FS_READ_FILE, FS_READ_DIR = 1 << 0, 1 << 1, 1 << 2, 1 << 3
FS_ABI1 = (1 << 13) - 1  # execute … make_sym
FS_REFER, FS_TRUNCATE, FS_IOCTL_DEV = 1 << 13, 1 << 14, 1 << 15
NET_BIND_TCP, NET_CONNECT_TCP = 1 << 0, 1 << 1
SCOPE_ABSTRACT_UNIX_SOCKET, SCOPE_SIGNAL = 1 << 0, 1 << 1
RULE_PATH_BENEATH, RULE_NET_PORT = 1, 2
CREATE_RULESET_VERSION = 1 << 0
FILE_RIGHTS = FS_EXECUTE | FS_WRITE_FILE | FS_READ_FILE | FS_TRUNCATE | FS_IOCTL_DEV
READ_RIGHTS = FS_EXECUTE | FS_READ_FILE | FS_READ_DIR


def handled_fs(abi: int) -> int:
    """The file-system rights a ruleset handles (denies unless a rule grants) on this ABI."""
    rights = FS_ABI1
    if abi >= 2:
        rights |= FS_REFER
    if abi >= 3:
        rights |= FS_TRUNCATE
    if abi >= 5:
        rights |= FS_IOCTL_DEV
    return rights


def handled_net(abi: int, connect: tuple[int, ...] | None) -> int:
    """TCP bind and connect are handled (ABI 4 on) unless any network is allowed."""
    return NET_BIND_TCP | NET_CONNECT_TCP if abi >= 4 and connect is not None else 0


def scopes(abi: int) -> int:
    """ABI 6 on: no signal to, and no abstract Unix socket of, a process outside the sandbox."""
    return SCOPE_ABSTRACT_UNIX_SOCKET | SCOPE_SIGNAL if abi >= 6 else 0


_libc = ctypes.CDLL(None, use_errno=True) if _LINUX else None


def _syscall(name: str, *args: object) -> int:
    if _libc is None:
        raise OSError(f"{name}: the sandbox needs Linux")
    res = _libc.syscall(ctypes.c_long(_NR[name]), *args)
    if res < 0:
        raise OSError(ctypes.get_errno(), f"{name}: {os.strerror(ctypes.get_errno())}")
    return res


def _prctl(option: int, arg: int = 0, arg3: int = 0) -> int:
    if _libc is None:
        raise OSError("prctl: the sandbox needs Linux")
    res = _libc.prctl(
        option, ctypes.c_ulong(arg), ctypes.c_ulong(arg3), ctypes.c_ulong(0), ctypes.c_ulong(0)
    )
    if res < 0:
        raise OSError(ctypes.get_errno(), f"prctl({option}): {os.strerror(ctypes.get_errno())}")
    return res


def landlock_abi() -> int:
    """The kernel's Landlock ABI version; 0 when it has none (or it is turned off)."""
    if not _LINUX:
        return 0
    try:
        return _syscall(
            "landlock_create_ruleset",
            None,
            ctypes.c_size_t(0),
            ctypes.c_uint32(CREATE_RULESET_VERSION),
        )
    except OSError:
        return 0


def _seccomp_available() -> bool:
    action = ctypes.c_uint32(SECCOMP_RET_ERRNO)
    try:
        _syscall(
            "seccomp",
            ctypes.c_uint(SECCOMP_GET_ACTION_AVAIL),
            ctypes.c_uint(0),
            ctypes.byref(action),
        )
        return True
    except OSError:
        return False


def probe() -> list[str]:
    """The protections a process confined here gets: ``landlock`` (files), ``landlock_network``
    (TCP, ABI 4), ``landlock_scopes`` (signals and abstract sockets, ABI 6), ``seccomp``,
    ``no_new_privs`` and ``no_capabilities``; [] off Linux."""
    if not _LINUX:
        return []
    found = []
    abi = landlock_abi()
    if abi >= 1:
        found.append("landlock")
    if abi >= 4:
        found.append("landlock_network")
    if abi >= 6:
        found.append("landlock_scopes")
    if _seccomp_available():
        found.append("seccomp")
    try:
        _prctl(PR_GET_NO_NEW_PRIVS)
        found.append("no_new_privs")
        _prctl(PR_CAPBSET_READ, 0)
        found.append("no_capabilities")
    except OSError:
        pass
    return found


def not_dumpable() -> bool:
    """Make this process non-dumpable: processes of its user (replicas) can then neither ptrace
    it nor read its /proc/<pid>/environ, mem or fds. False when it cannot be done."""
    try:
        _prctl(PR_SET_DUMPABLE, 0)
        return True
    except (OSError, TypeError, AttributeError):
        return False


# -- applying a policy -----------------------------------------------------------------------------


def apply(policy: Policy) -> list[str]:
    """Confine this process (and all it will start) for good; what was applied, as `probe` names
    it. In order: no new privileges (no setuid gain), not dumpable (no ptrace or /proc/<pid>/mem
    by its user), no capabilities (root keeps its uid but loses its powers), Landlock (files,
    TCP, signals), seccomp (sockets, namespaces, other processes). SandboxError when a layer the
    kernel has fails: the caller must not run the program."""
    if not _LINUX:
        return []
    done = []
    try:
        _prctl(PR_SET_NO_NEW_PRIVS, 1)
        done.append("no_new_privs")
        _prctl(PR_SET_DUMPABLE, 0)
        _drop_capabilities()
        done.append("no_capabilities")
        abi = landlock_abi()
        if abi:
            _landlock(policy, abi)
            done += [
                n
                for n, least in (("landlock", 1), ("landlock_network", 4), ("landlock_scopes", 6))
                if abi >= least
            ]
        if _seccomp_available():
            _seccomp(network=policy.connect != ())
            done.append("seccomp")
    except OSError as exc:
        raise SandboxError(exc.errno or errno.EPERM, f"cannot confine the process: {exc}") from None
    return done


def _drop_capabilities() -> None:
    cap = 0
    while True:
        try:
            _prctl(PR_CAPBSET_READ, cap)
        except OSError:
            break  # past the last capability this kernel knows
        with contextlib.suppress(OSError):  # no CAP_SETPCAP (not root): nothing to drop
            _prctl(PR_CAPBSET_DROP, cap)
        cap += 1
    with contextlib.suppress(OSError):
        _prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL)
    header = (ctypes.c_uint32 * 2)(0x20080522, 0)  # _LINUX_CAPABILITY_VERSION_3, this process
    data = (ctypes.c_uint32 * 6)()  # effective, permitted, inheritable: all empty
    _syscall("capset", ctypes.byref(header), ctypes.byref(data))


def own_paths() -> list[tuple[str, bool]]:
    """Paths every confined process needs beyond its policy: its own /proc/<pid> (read)."""
    return [(f"/proc/{os.getpid()}", False)]


def _landlock(policy: Policy, abi: int) -> None:
    fs = handled_fs(abi)
    net = handled_net(abi, policy.connect)
    attr = struct.pack("QQQ", fs, net, scopes(abi))
    buf = ctypes.create_string_buffer(attr, len(attr))
    ruleset = _syscall(
        "landlock_create_ruleset", buf, ctypes.c_size_t(len(attr)), ctypes.c_uint32(0)
    )
    try:
        rules = [(p, False) for p in policy.read] + [(p, True) for p in policy.write]
        for path, writable in rules + own_paths():
            _allow_path(ruleset, path, (fs if writable else READ_RIGHTS) & fs)
        for port in policy.connect or ():
            rule = ctypes.create_string_buffer(struct.pack("QQ", NET_CONNECT_TCP, port), 16)
            _syscall(
                "landlock_add_rule",
                ctypes.c_int(ruleset),
                ctypes.c_int(RULE_NET_PORT),
                rule,
                ctypes.c_uint32(0),
            )
        _syscall("landlock_restrict_self", ctypes.c_int(ruleset), ctypes.c_uint32(0))
    finally:
        os.close(ruleset)


def _allow_path(ruleset: int, path: str, rights: int) -> None:
    try:
        fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
    except OSError:
        return  # not on this machine (or not ours to open): nothing to grant
    try:
        if not stat.S_ISDIR(os.fstat(fd).st_mode):
            rights &= FILE_RIGHTS
        rule = ctypes.create_string_buffer(struct.pack("=Qi", rights, fd), 12)
        _syscall(
            "landlock_add_rule",
            ctypes.c_int(ruleset),
            ctypes.c_int(RULE_PATH_BENEATH),
            rule,
            ctypes.c_uint32(0),
        )
    finally:
        os.close(fd)


def seccomp_program(machine: str, network: bool) -> list[tuple[int, int, int, int]]:
    """The classic-BPF filter as (code, jt, jf, k) rows. Another architecture's calls (i386 or
    x32 on x86_64) and DENIED calls → EPERM; clone3 → ENOSYS (libc then falls back to clone,
    whose flags a filter can read); clone making new namespaces → EPERM; without network,
    socket() of any family → EPERM (socketpair and the inherited socket still work)."""
    nr = _NR_BY_MACHINE[machine]
    ld, jeq, jge, jset, ret = 0x20, 0x15, 0x35, 0x45, 0x06  # BPF_LD|W|ABS, BPF_JMP|…|K, BPF_RET
    eperm, enosys = SECCOMP_RET_ERRNO | errno.EPERM, SECCOMP_RET_ERRNO | errno.ENOSYS
    rows: list[tuple] = [
        (ld, 0, 0, 4),
        (jeq, 1, 0, _ARCH[machine]),
        (ret, 0, 0, eperm),
        (ld, 0, 0, 0),
    ]  # seccomp_data: nr at 0, arch at 4, args from 16
    if machine == "x86_64":
        rows.append((jge, "deny", 0, 0x40000000))  # __X32_SYSCALL_BIT
    rows += [(jeq, "enosys", 0, nr["clone3"]), (jeq, "clone", 0, nr["clone"])]
    denied = [nr[name] for name in DENIED if name in nr] + ([] if network else [nr["socket"]])
    rows += [(jeq, "deny", 0, n) for n in denied]
    rows += [
        (ret, 0, 0, SECCOMP_RET_ALLOW),
        ("clone", ld, 0, 0, 16),
        (jset, "deny", 0, CLONE_NEW_NAMESPACES),
        (ret, 0, 0, SECCOMP_RET_ALLOW),
        ("deny", ret, 0, 0, eperm),
        ("enosys", ret, 0, 0, enosys),
    ]  # (classic BPF jumps only forward)
    labels = {}
    for i, row in enumerate(rows):
        if isinstance(row[0], str):
            labels[row[0]] = i
            rows[i] = row[1:]
    return [
        (code, labels[jt] - i - 1 if isinstance(jt, str) else jt, jf, k)
        for i, (code, jt, jf, k) in enumerate(rows)
    ]


def _seccomp(network: bool) -> None:
    rows = seccomp_program(_MACHINE, network)
    raw = b"".join(struct.pack("=HBBI", *row) for row in rows)
    filt = ctypes.create_string_buffer(raw, len(raw))

    class _Fprog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]

    prog = _Fprog(len(rows), ctypes.cast(filt, ctypes.c_void_p))
    _prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.addressof(prog))


# -- the launcher ----------------------------------------------------------------------------------


def _die_with(parent: int, sig: int) -> None:
    """Get ``sig`` when the server dies; exit now if it already did."""
    if _LINUX:
        _prctl(PR_SET_PDEATHSIG, sig)
    if parent and os.getppid() != parent:
        os._exit(EXIT_SANDBOX)


def _confine(policy: Policy) -> None:
    try:
        apply(policy)
    except SandboxError as exc:
        print(f"modelport sandbox: {exc}", file=sys.stderr, flush=True)
        os._exit(EXIT_SANDBOX)


def _exec(argv: list[str]) -> None:
    try:
        os.execvp(argv[0], argv)
    except OSError as exc:
        print(f"modelport sandbox: cannot run {argv[0]}: {exc}", file=sys.stderr, flush=True)
        os._exit(127)


def _others() -> list[int]:
    """Processes left by the supervised program: in this process group, or children of ours
    (orphans re-parented here, as we are a subreaper)."""
    me, group, found = os.getpid(), os.getpgrp(), []
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == me:
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[1]) == me or int(fields[2]) == group:
            found.append(int(name))
    return found


def _kill_others() -> None:
    for _ in range(3):  # a process forking meanwhile leaves a child: look again
        pids = _others()
        if not pids:
            return
        for pid in pids:
            with contextlib.suppress(OSError):
                os.kill(pid, SIGKILL)
        _reap()


def _reap() -> None:
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def _supervise(policy: Policy, argv: list[str], parent: int) -> int:
    """Run ``argv`` confined as our child; when it ends, or we are told to stop (the server died:
    SIGTERM by PR_SET_PDEATHSIG), kill everything it left, then exit as it did."""
    if os.getpgrp() != os.getpid():
        os.setsid()  # a group of our own: what it leaves is told apart (and killpg(pid) works)
    if _LINUX:
        _prctl(PR_SET_CHILD_SUBREAPER, 1)

    def stop(signum, frame) -> None:
        _kill_others()
        os._exit(128 + signum)

    import signal

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, stop)
    _die_with(parent, SIGTERM)
    child = os.fork()
    if child == 0:
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(signum, signal.SIG_DFL)
        _die_with(0, SIGKILL)
        _confine(policy)
        _exec(argv)
    while True:
        try:
            pid, status = os.waitpid(-1, 0)
        except ChildProcessError:
            return 1
        if pid == child:
            break
    _kill_others()
    return os.WEXITSTATUS(status) if os.WIFEXITED(status) else 128 + os.WTERMSIG(status)


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["probe"]:
        print(" ".join(probe()) or "none", f"(Landlock ABI {landlock_abi()})")
        return 0
    if args[:1] != ["exec"] or "--" not in args:
        print(__doc__, file=sys.stderr)
        return 2
    split = args.index("--")
    opts, target = args[1:split], args[split + 1 :]
    policy, parent, supervise = Policy(), 0, False
    i = 0
    while i < len(opts):
        if opts[i] == "--policy":
            policy, i = Policy.decode(opts[i + 1]), i + 2
        elif opts[i] == "--parent":
            parent, i = int(opts[i + 1]), i + 2
        elif opts[i] == "--supervise":
            supervise, i = True, i + 1
        else:
            print(f"modelport sandbox: unknown option {opts[i]}", file=sys.stderr)
            return 2
    if not target:
        return 2
    if supervise:
        return _supervise(policy, target, parent)
    _die_with(parent, SIGKILL)
    _confine(policy)
    _exec(target)
    return 127


if __name__ == "__main__":
    sys.exit(main())
