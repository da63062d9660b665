"""The build pipeline: queued → building → built | failed, a few at once, each step logged."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
from pathlib import Path
from typing import Any

import msgspec

from modelport.builder import deps, rdeps, rlang
from modelport.builder.buildlog import BuildLog, log_path
from modelport.builder.projects import Projects, RestoreFailed
from modelport.builder.signature_probe import InspectFailed, inspect_build
from modelport.builder.snapshot import materialize as write_snapshot
from modelport.errors import disk_full, store_full
from modelport.registry import builds as build_rows
from modelport.registry.db import Database
from modelport.registry.rows import BuildRow
from modelport.runtime.rbridge import is_r_entry
from modelport.sandboxing import Sandbox
from modelport.scratch import scratch_dir
from modelport.settings import Settings
from modelport.store import manifest as mf
from modelport.store.contract import ContentStore
from modelport.store.objects import StoreUnreachable

log = logging.getLogger("modelport.builder")


RESTARTED_DURING_BUILD = (
    "The server restarted during this build; building again from its stored snapshot."
)
STOPPED_DURING_BUILD = (
    "The server stopped during the build, twice (it was built again after the "
    "first time); upload the project again to build it."
)


def _tried_again(log: Path) -> bool:
    """Whether the build's log says it was already built again after a server stop."""
    try:
        return RESTARTED_DURING_BUILD in log.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return False


class BuildFailed(Exception):
    pass


def staging_dir(settings: Settings):
    """A temp folder beside the project folders, held while a project is staged in it."""
    return scratch_dir(settings.data_dir / "projects", ".tmp-")


def stage_project(
    store: ContentStore, settings: Settings, snapshot: mf.Snapshot, staging: Path
) -> Path:
    """The snapshot in ``staging``, for the dependency step to read (blocking): the tools it runs
    may write there (a local package's build files), never in the folder that serves."""
    write_snapshot(store, snapshot, staging, settings.data_dir / "files")
    return staging


class Builder:
    """Runs queued builds in the background; the API never waits on one."""

    def __init__(
        self,
        settings: Settings,
        db: Database,
        store: ContentStore,
        runtime_dir: Path,
        sandbox: Sandbox | None = None,
    ):
        self.settings, self.db, self.store, self.runtime_dir = settings, db, store, runtime_dir
        self.sandbox = sandbox  # None or off: build steps run with the server's rights
        self.projects = Projects(store, settings.data_dir)
        self.queue: asyncio.Queue[int] = asyncio.Queue()
        self.running: set[int] = set()
        self._workers: list[asyncio.Task] = []

    async def start(self) -> None:
        """Queued builds wait again. One the server stopped during is built again from its
        snapshot, once: stopped during that second try too (a build that takes the server down,
        as an out-of-memory can), it is failed with that reason."""
        for model, row in await build_rows.unfinished(self.db):
            if row.status == "building":
                path = log_path(self.settings.logs_dir, model, row.number)
                blog = BuildLog(path)
                again = await asyncio.to_thread(_tried_again, path)
                blog(f"FAILED: {STOPPED_DURING_BUILD}" if again else RESTARTED_DURING_BUILD)
                blog.close()
                if again:
                    await build_rows.finish(
                        self.db,
                        row.id,
                        model=model,
                        number=row.number,
                        fields={"status": "failed", "error": STOPPED_DURING_BUILD},
                    )
                    continue
            self.queue.put_nowait(row.id)
        self._workers = [
            asyncio.create_task(self._work()) for _ in range(self.settings.build_workers)
        ]

    async def stop(self) -> None:
        for task in self._workers:
            task.cancel()
        for task in self._workers:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    def submit(self, build_id: int) -> None:
        self.queue.put_nowait(build_id)

    async def _work(self) -> None:
        while True:
            build_id = await self.queue.get()
            self.running.add(build_id)
            try:
                await self.run(build_id)
            except Exception:
                log.exception("build %s crashed the builder", build_id)
            finally:
                self.running.discard(build_id)

    async def run(self, build_id: int) -> None:
        found = await build_rows.with_model(self.db, build_id)
        if found is None or found[1].status not in ("queued", "building"):
            return
        model, row = found
        blog = BuildLog(log_path(self.settings.logs_dir, model, row.number))
        await build_rows.set_building(self.db, build_id)
        blog(f"Building {model} #{row.number}: {row.entrypoint} on Python {row.python}")
        try:
            with self.store.lease() as lease:  # gc keeps every object this build touches
                fields, objects = await self._steps(model, row, blog, lease)
        except (
            BuildFailed,
            deps.DependencyError,
            InspectFailed,
            rlang.RMissing,
            rdeps.RDependencyError,
            StoreUnreachable,
        ) as exc:
            fields, objects = {"status": "failed", "error": str(exc)}, []
            blog(f"FAILED: {exc}")
        except Exception as exc:  # a full disk, or a bug of ours: still a finished build
            if disk_full(exc):
                error = store_full(self.settings.data_dir).message
                blog(f"FAILED: {error} ({exc})")
            else:
                log.exception("build %s failed unexpectedly", build_id)
                error = f"internal error: {exc!r}"
                blog(f"FAILED (internal error): {exc!r}")
            fields, objects = {"status": "failed", "error": error}, []
        await build_rows.finish(
            self.db,
            build_id,
            model=model,
            number=row.number,
            fields=fields,
            objects=objects,
        )
        blog("Built " + fields["digest"] if fields["status"] == "built" else "Build failed")
        blog.close()

    async def _steps(
        self, model: str, row: BuildRow, blog: BuildLog, lease
    ) -> tuple[dict[str, Any], list[str]]:
        if row.snapshot is None:
            raise BuildFailed("The build has no snapshot of its upload.")
        snapshot = msgspec.json.decode(
            await asyncio.to_thread(self.store.read_bytes, row.snapshot), type=mf.Snapshot
        )
        requirements = await self._requirements_text(row, snapshot)
        example_input = row.example_input
        r = r_packages = None
        r_libs: list[str] = []
        if is_r_entry(row.entrypoint):  # an R function: the Python env is its worker's relay
            r = await asyncio.to_thread(rlang.find_r, self.settings.rscript)
            blog(f"→ R {r.version} ({r.rscript})")
            r_packages = await self._r_packages(r, snapshot, blog, lease)
            library = await self.r_library(r_packages, blog)
            r_libs = [str(library)] if library else []
        with staging_dir(self.settings) as staging:
            await asyncio.to_thread(stage_project, self.store, self.settings, snapshot, staging)
            lock, digest, content, wheels, new_bytes, python = await self._dependencies(
                row, snapshot, requirements, example_input, staging, blog, lease, r, r_packages
            )
        try:  # the same folder built again gets its served folder checked (and restored)
            project, notes = await asyncio.to_thread(self.projects.ensure, digest, snapshot.files)
        except RestoreFailed as exc:
            raise BuildFailed(str(exc)) from None
        for note in notes:
            blog(f"  {note}")
        blog("→ checking the function")
        result = await inspect_build(
            python,
            project,
            row.entrypoint,
            self.runtime_dir,
            example_input,
            blog,
            self.sandbox,
            f"build-{row.id}",
            rscript=r.rscript if r else "",
            r_libs=r_libs,
        )
        described = result["describe"]
        example_output = self._check_example(row, example_input, result.get("example_output"), blog)
        manifest = mf.Manifest(
            format=mf.FORMAT,
            digest=digest,
            content=content,
            derived=mf.Derived(
                wheels=wheels,
                lock_digest=lock.digest,
                requirements=row.requirements,
                form=described["form"],
                is_async=described["is_async"],
                input_schema=described["input_schema"],
                output_schema=described["output_schema"],
                example_output=example_output,
                r=r_packages,
            ),
            meta=mf.Meta(
                model=model,
                number=row.number,
                message=row.message,
                labels=row.labels,
                created_by=row.created_by,
                created_at=row.created_at,
                git_commit=row.git_commit,
            ),
        )
        put = await asyncio.to_thread(self.store.put_bytes, mf.encode(manifest))
        fields = {
            "status": "built",
            "digest": digest,
            "manifest": put.digest,
            "lock_digest": lock.digest,
            "input_schema": described["input_schema"],
            "output_schema": described["output_schema"],
            "example_output": None
            if example_output is None
            else msgspec.json.encode(example_output).decode(),
            "size_bytes": row.size_bytes
            + sum(w.size for w in wheels)
            + (sum(t.size for t in r_packages.tarballs) if r_packages else 0),
            "new_bytes": row.new_bytes + new_bytes + put.new_bytes,
            "error": None,
        }
        tarballs = [t.digest for t in r_packages.tarballs] if r_packages else []
        return fields, [put.digest, *(w.digest for w in wheels), *tarballs]

    async def _dependencies(
        self,
        row: BuildRow,
        snapshot,
        requirements,
        example_input,
        project,
        blog,
        lease,
        r: rlang.RInfo | None = None,
        r_packages: mf.RPackages | None = None,
    ):
        """Lock → digest → wheels in the store → the environment. An R function's lock text
        also holds its R version and the machine packages it uses (so both are in the digest)."""
        with scratch_dir(self.settings.data_dir, ".build-") as work:
            blog("→ resolving dependencies with uv")
            lock = await asyncio.to_thread(
                deps.resolve,
                requirements,
                row.python,
                workdir=work,
                log=blog,
                project_dir=project,
                **self._index_options(),
            )
            blog(
                f"  locked {len(lock.packages)} packages: "
                + ", ".join(f"{p.name}=={p.version}" for p in lock.packages)
            )
            lock_text = lock.text
            if r is not None and r_packages is not None:
                lock_text += (
                    rlang.lock_lines(r, [])
                    + "".join(
                        f"# R package: {t.name}=={t.version} {t.digest}\n"
                        for t in r_packages.tarballs
                    )
                    + "".join(
                        f"# R package: {n}=={v} (the machine's R)\n"
                        for n, v in sorted(r_packages.machine.items())
                    )
                )
            content = mf.Content(
                snapshot.files, lock_text, row.entrypoint, row.python, example_input
            )
            wheels, new_bytes = await self._wheels(lock, work, blog, lease)
            blog("→ installing the environment (offline, from the stored wheels)")
            python = await self.environment(lock, wheels, blog)
        return lock, mf.content_digest(content), content, wheels, new_bytes, python

    def _index_options(self) -> dict:
        s = self.settings
        return {
            "index_url": s.index_url,
            "find_links": s.find_links,
            "no_index": s.no_index,
            "cache_dir": s.data_dir / "wheels",
            "jail": self._jail(),
        }

    def _jail(self):
        """How uv runs confined (None: as the server)."""
        if self.sandbox is None:
            return None
        s = self.settings
        return self.sandbox.uv_jail(
            index_url=s.index_url, find_links=s.find_links, no_index=s.no_index
        )

    async def _r_packages(self, r: rlang.RInfo, snapshot: mf.Snapshot, blog, lease) -> mf.RPackages:
        """r-requirements.txt resolved (the machine's R's packages used as they are, the others
        from MODELPORT_R_REPOS), each source tarball fetched into the store: the R lock."""
        files = {entry.path: entry.digest for entry in snapshot.files}
        wanted: list[tuple[str, str | None]] = []
        for name in (rdeps.R_REQUIREMENTS, "DESCRIPTION"):  # the first found declares them
            if name in files:
                text = (await asyncio.to_thread(self.store.read_bytes, files[name])).decode(
                    "utf-8", "replace"
                )
                wanted = (
                    rdeps.parse_requirements(text)
                    if name == rdeps.R_REQUIREMENTS
                    else rdeps.description_imports(text)
                )
                blog(f"  R packages declared in {name}")
                break
        if wanted:
            blog(f"→ resolving R packages against {', '.join(self.settings.r_repos)}")
        runtime = [] if any(n == "jsonlite" for n, _ in wanted) else [("jsonlite", None)]
        packages, order = await asyncio.to_thread(
            rdeps.resolve, [*wanted, *runtime], r, self.settings.r_repos if wanted else [], blog
        )
        machine = {p.name: p.version for p in packages if p.machine}
        if machine:
            blog(
                "  from the machine's R as they are: "
                + ", ".join(f"{n} {v}" for n, v in sorted(machine.items()))
            )
        tarballs: list[mf.Wheel] = []
        locked: list[rdeps.RPackage] = []
        if order:
            with scratch_dir(self.settings.data_dir, ".rpkgs-") as work:
                for pkg, path in await asyncio.to_thread(rdeps.fetch, packages, work, blog):
                    put = await asyncio.to_thread(self.store.put_file, path)
                    lease.add(put.digest)
                    tarballs.append(
                        mf.Wheel(pkg.name, pkg.version, pkg.filename, put.digest, put.size)
                    )
                    locked.append(pkg)
            blog("  locked " + ", ".join(f"{p.name}=={p.version}" for p in locked))
        digest = rdeps.r_lock_digest(r.version, [*locked, *(p for p in packages if p.machine)])
        return mf.RPackages(r.version, digest, order, tarballs, machine)

    async def r_library(self, packages: mf.RPackages, blog) -> Path | None:
        """The R library of a build's packages, made once per R lock from the stored tarballs
        (None when it needs none)."""
        if not packages.order:
            return None
        root = self.settings.data_dir / "rlibs"
        target = rdeps.library_path(root, packages.digest)
        if (target / rdeps.COMPLETE_MARKER).is_file():
            return target
        lock = rdeps.RLock(
            packages.r_version,
            [
                rdeps.RPackage(t.name, t.version, t.digest.removeprefix("sha256:"), t.filename)
                for t in packages.tarballs
            ],
            packages.order,
            packages.digest,
        )
        blog("→ installing R packages (offline, from the stored tarballs)")
        with scratch_dir(self.settings.data_dir, ".rtar-") as tmp:
            paths = {}
            for t in packages.tarballs:
                await asyncio.to_thread(self.store.copy_to, t.digest, tmp / t.filename)
                paths[t.name] = tmp / t.filename
            return await asyncio.to_thread(
                rdeps.install, lock, paths, self.settings.rscript, root, blog, self._r_jail(tmp)
            )

    def _r_jail(self, tarballs: Path):
        """How R CMD INSTALL runs confined (a package's configure script and R code run): it
        reads the system, R and the tarballs, writes the library being made, no network."""
        sandbox = self.sandbox
        if sandbox is None or not sandbox.enabled:
            return None
        from modelport.runtime.sandbox import Policy
        from modelport.sandboxing import DEVICES, SYSTEM_READ, r_paths

        def confine(argv: list[str], lib: Path, tmp: Path) -> list[str]:
            policy = Policy(
                read=(*SYSTEM_READ, *r_paths(self.settings.rscript), str(tarballs)),
                write=(*DEVICES, str(lib.parent)),
                connect=(),
            )
            return sandbox.command(sys.executable, policy, argv, supervise=True)

        return confine

    async def _requirements_text(self, row: BuildRow, snapshot: mf.Snapshot) -> str:
        if not row.requirements:
            return ""
        for entry in snapshot.files:
            if entry.path == row.requirements:
                data = await asyncio.to_thread(self.store.read_bytes, entry.digest)
                return data.decode("utf-8", "replace")
        raise BuildFailed(f"The requirements file '{row.requirements}' is not in the upload.")

    async def _wheels(self, lock: deps.Lock, work: Path, blog, lease) -> tuple[list[mf.Wheel], int]:
        """Every locked wheel in the store; fetched only when the store lacks one."""
        wanted = [
            mf.Wheel(p.name, p.version, p.wheel, "sha256:" + p.sha256, 0) for p in lock.packages
        ]
        for w in wanted:
            lease.add(w.digest)
        if all(self.store.has(w.digest) for w in wanted):
            blog("→ wheels: all already in the store")
            return [
                mf.Wheel(w.name, w.version, w.filename, w.digest, self.store.size(w.digest))
                for w in wanted
            ], 0
        blog("→ fetching wheels")
        paths = await asyncio.to_thread(
            deps.fetch_wheels, lock, work / "wheels", log=blog, **self._index_options()
        )
        by_name = {p.name: p for p in paths}
        wheels, new_bytes = [], 0
        for w in wanted:
            put = await asyncio.to_thread(self.store.put_file, by_name[w.filename])
            if put.digest != w.digest:
                raise BuildFailed(f"{w.filename}: its hash changed between lock and fetch")
            new_bytes += put.new_bytes
            wheels.append(mf.Wheel(w.name, w.version, w.filename, w.digest, put.size))
        blog(f"  stored {len(wheels)} wheels ({new_bytes} new bytes)")
        return wheels, new_bytes

    async def environment(self, lock: deps.Lock, wheels: list[mf.Wheel], blog) -> Path:
        """The lock's environment: reused when it exists, else installed from stored wheels only."""
        if found := deps.env_python(self.settings.envs_dir, lock.digest):
            blog(f"  reusing environment {lock.digest[7:19]}")
            return found
        with scratch_dir(self.settings.data_dir, ".wheels-") as tmp:
            for w in wheels:
                await asyncio.to_thread(self.store.copy_to, w.digest, tmp / w.filename)
            return await asyncio.to_thread(
                deps.materialize, lock, tmp, self.settings.envs_dir, log=blog, jail=self._jail()
            )

    @staticmethod
    def _check_example(row: BuildRow, example_input: Any, output: Any, blog) -> Any:
        expected = row.example_output
        if example_input is None:
            return expected
        if expected is not None and expected != output:
            raise BuildFailed(
                "The example output does not match: expected "
                f"{msgspec.json.encode(expected).decode()[:500]}, got "
                f"{msgspec.json.encode(output).decode()[:500]}"
            )
        blog(f"  example output: {msgspec.json.encode(output).decode()[:500]}")
        return output
