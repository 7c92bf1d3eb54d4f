"""A throwaway PostgreSQL cluster for tests and benchmarks.

`PgServer` runs ``initdb`` into a temporary directory, starts ``postgres`` on a free
127.0.0.1 port with trust authentication, and removes everything again on `stop()`.
PostgreSQL refuses to run as root, so when this process is root the binaries run as the
``postgres`` OS user; otherwise they run as the current user.

What it must not do: skip or degrade silently. Every way it can fail to start raises
`PgServerError` (a `RuntimeError`) saying what is missing; deciding whether that fails or
skips a test belongs to `tests.support.pg_fixtures`.

Cleanup is layered so no postmaster outlives the process that started it:
``pg_ctl stop``, then SIGQUIT and SIGKILL to the postmaster and its children, an `atexit`
hook for servers nobody stopped, and (Linux, main thread) a parent-death signal so even an
``os._exit`` or SIGKILL of the owner shuts the cluster down. Only the temporary directory
can be left behind in that last case.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import glob
import logging
import os
import pwd
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Self

import psycopg
from psycopg import sql

__all__ = ["PgBinaries", "PgServer", "PgServerError", "ShutdownMode", "find_binaries"]

_log = logging.getLogger(__name__)

ShutdownMode = Literal["smart", "fast", "immediate"]

SUPERUSER = "postgres"
INSTALL_HINT = "install the postgresql package (apt-get install -y postgresql)"
DEFAULT_SEARCH_GLOB = "/usr/lib/postgresql/*/bin"
# Sized for a 2-core CI machine; fsync stays on so crash tests see real durability.
DEFAULT_SETTINGS: Mapping[str, str] = {
    "max_connections": "200",
    "shared_buffers": "128MB",
}
_MAX_IDENTIFIER_BYTES = 63
_PR_SET_PDEATHSIG = 1


class PgServerError(RuntimeError):
    """The throwaway PostgreSQL server could not be found, started, or managed."""


@dataclass(frozen=True)
class PgBinaries:
    """Absolute paths of the PostgreSQL server programs, all from one installation."""

    initdb: Path
    pg_ctl: Path
    postgres: Path

    @property
    def version(self) -> str:
        """The ``postgres --version`` line, e.g. ``postgres (PostgreSQL) 15.14``."""
        return subprocess.run(
            [str(self.postgres), "--version"], capture_output=True, text=True, check=True
        ).stdout.strip()


def find_binaries(
    *, path: str | None = None, search_glob: str | None = DEFAULT_SEARCH_GLOB
) -> PgBinaries:
    """Locate initdb, pg_ctl and postgres: first on PATH, then in ``/usr/lib/postgresql/*/bin``.

    Args:
        path: The search path for the first step; defaults to ``$PATH``.
        search_glob: Directories tried next, newest major version first; None to skip.

    Returns:
        The binaries, taken from the directory that holds ``initdb``.

    Raises:
        PgServerError: No directory holds all three programs.
    """
    candidates: list[Path] = []
    on_path = shutil.which("initdb", path=path if path is not None else os.environ.get("PATH"))
    if on_path:
        # /usr/local/bin/initdb is often a symlink into the real bin directory.
        candidates += [Path(on_path).resolve().parent, Path(on_path).parent]
    if search_glob:
        candidates += sorted(
            (Path(d) for d in glob.glob(search_glob)), key=_major_version, reverse=True
        )
    for directory in candidates:
        found = binaries_in(directory)
        if found is not None:
            return found
    where = ", ".join(str(d) for d in candidates) or "nowhere"
    raise PgServerError(
        f"PostgreSQL server binaries (initdb, pg_ctl, postgres) not found on PATH or in "
        f"{search_glob} (looked in: {where}); {INSTALL_HINT}, or run scripts/ensure_postgres.sh"
    )


def binaries_in(directory: Path) -> PgBinaries | None:
    """The server binaries in ``directory``, or None when any of them is missing."""
    paths = {name: directory / name for name in ("initdb", "pg_ctl", "postgres")}
    if all(p.is_file() and os.access(p, os.X_OK) for p in paths.values()):
        return PgBinaries(**paths)
    return None


def _major_version(bin_dir: Path) -> int:
    # /usr/lib/postgresql/15/bin -> 15; unknown layouts sort last.
    with contextlib.suppress(ValueError):
        return int(bin_dir.parent.name)
    return -1


@dataclass(frozen=True)
class _Identity:
    """Who the server programs run as: None fields mean "this process's own user"."""

    uid: int | None = None
    gid: int | None = None
    groups: frozenset[int] = frozenset()

    @classmethod
    def for_server(cls) -> _Identity:
        if os.geteuid() != 0:
            return cls()
        try:
            entry = pwd.getpwnam(SUPERUSER)
        except KeyError:
            raise PgServerError(
                f"running as root, and PostgreSQL refuses to run as root, but there is no "
                f"'{SUPERUSER}' OS user to run it as; {INSTALL_HINT} (it creates that user) "
                f"or create one with 'useradd --system {SUPERUSER}'"
            ) from None
        groups = frozenset(os.getgrouplist(entry.pw_name, entry.pw_gid))
        return cls(uid=entry.pw_uid, gid=entry.pw_gid, groups=groups)

    def subprocess_kwargs(self) -> dict[str, Any]:
        if self.uid is None:
            return {}
        # The user's own supplementary groups, as runuser would set them, not root's.
        return {"user": self.uid, "group": self.gid, "extra_groups": sorted(self.groups)}

    def chown(self, path: Path) -> None:
        if self.uid is not None and self.gid is not None:
            os.chown(path, self.uid, self.gid)

    def check_can_reach(self, path: Path) -> None:
        """Raise unless every parent of ``path`` lets this identity through.

        Root's own directories (pytest's ``tmp_path`` under ``/tmp/pytest-of-root`` is
        0700) are a dead end for the postgres user, and initdb's message does not say so.
        """
        if self.uid is None:
            return
        for parent in path.parents:
            st = parent.stat()
            if st.st_uid == self.uid:
                allowed = st.st_mode & stat.S_IXUSR
            elif st.st_gid in self.groups:
                allowed = st.st_mode & stat.S_IXGRP
            else:
                allowed = st.st_mode & stat.S_IXOTH
            if not allowed:
                raise PgServerError(
                    f"the '{SUPERUSER}' OS user cannot enter {parent} (mode "
                    f"{stat.filemode(st.st_mode)}), so it cannot use {path}; choose a "
                    f"base_dir it can reach, such as {tempfile.gettempdir()}"
                )


class PgServer:
    """One throwaway PostgreSQL cluster with a default database.

    Use it as a context manager, or call `start()` and `stop()`::

        with PgServer() as pg:
            engine = sqlalchemy.create_engine(pg.url)

    Attributes:
        timings: Seconds spent in each startup phase (``initdb``, ``start``) and in the
            last ``restart``; benchmarks report these.
    """

    def __init__(
        self,
        *,
        dbname: str = "elspeth",
        binaries: PgBinaries | None = None,
        settings: Mapping[str, str] | None = None,
        startup_timeout: float = 30.0,
        base_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        """Prepare a server; nothing runs until `start()`.

        Args:
            dbname: The database `url` points at, created on start.
            binaries: Which PostgreSQL installation to use; found by `find_binaries()` when None.
            settings: Server settings added to (and overriding) `DEFAULT_SETTINGS`.
            startup_timeout: Seconds to wait for the server to accept connections.
            base_dir: Where the temporary directory goes; the system default when None.
        """
        _check_identifier(dbname)
        self.dbname = dbname
        self.timings: dict[str, float] = {}
        self._binaries = binaries
        self._settings = {**DEFAULT_SETTINGS, **(settings or {})}
        self._startup_timeout = startup_timeout
        self._base_dir = base_dir
        self._identity: _Identity | None = None
        self._root: Path | None = None
        self._port: int | None = None
        self._proc: subprocess.Popen[bytes] | None = None

    # -- public surface ---------------------------------------------------------------------

    @property
    def port(self) -> int:
        """The TCP port on 127.0.0.1; stays the same across `restart()`."""
        if self._port is None:
            raise PgServerError("the server has not been started")
        return self._port

    @property
    def url(self) -> str:
        """SQLAlchemy URL of the default database."""
        return self.url_for(self.dbname)

    def url_for(self, dbname: str) -> str:
        """SQLAlchemy URL (psycopg 3 driver) of ``dbname`` on this server."""
        return f"postgresql+psycopg://{SUPERUSER}@127.0.0.1:{self.port}/{dbname}"

    @property
    def data_dir(self) -> Path:
        return self._require_root() / "data"

    @property
    def log_path(self) -> Path:
        """The server log; error messages quote its tail."""
        return self._require_root() / "postgres.log"

    @property
    def pid(self) -> int | None:
        """The postmaster's process id while it runs."""
        return self._proc.pid if self.running and self._proc else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> Self:
        """Create the cluster, start the server, and create the default database.

        Returns:
            This server, so ``pg = PgServer().start()`` reads naturally.

        Raises:
            PgServerError: Binaries or the ``postgres`` user are missing, ``initdb`` failed,
                or the server did not accept connections within ``startup_timeout``.
        """
        if self._root is not None:
            raise PgServerError("the server was already started; use a new PgServer")
        self._binaries = self._binaries or find_binaries()
        self._identity = _Identity.for_server()
        self._root = Path(tempfile.mkdtemp(prefix="elspeth-pg-", dir=self._base_dir))
        atexit.register(self.stop)
        try:
            self._identity.check_can_reach(self._root)
            self._initdb()
            self._start_on_free_port()
            self.create_database(self.dbname)
        except BaseException:
            self.stop()
            raise
        return self

    def create_database(self, name: str) -> str:
        """Create an empty database and return its SQLAlchemy URL.

        Raises:
            PgServerError: The server is not running or refused (e.g. the name exists).
        """
        _check_identifier(name)
        self._admin(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return self.url_for(name)

    def drop_database(self, name: str) -> None:
        """Drop a database, ending any sessions still connected to it; absent is fine."""
        _check_identifier(name)
        self._admin(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))

    def restart(self, mode: ShutdownMode = "fast") -> None:
        """Stop the server with ``pg_ctl stop -m mode`` and start it on the same port.

        ``fast`` ends open sessions cleanly; ``immediate`` is a crash, followed by WAL
        recovery on start. Open client connections see an ``OperationalError`` afterwards.

        Raises:
            PgServerError: The server was not running, did not stop, or did not come back.
        """
        if not self.running:
            raise PgServerError("restart() needs a running server")
        began = time.perf_counter()
        if not self._pg_ctl_stop(mode):
            raise PgServerError(f"pg_ctl stop -m {mode} failed; {self._log_tail()}")
        self._launch(self.port)
        self._wait_until_ready()
        self.timings["restart"] = time.perf_counter() - began

    def stop(self) -> None:
        """Shut the server down (escalating to signals) and delete its directory. Idempotent."""
        atexit.unregister(self.stop)
        if self._proc is not None:
            if self._proc.poll() is None and not self._pg_ctl_stop("fast"):
                _log.warning("pg_ctl stop failed; killing PostgreSQL (pid %d)", self._proc.pid)
                self._kill()
            self._proc = None
        if self._root is not None:
            shutil.rmtree(self._root, ignore_errors=True)
            self._root = None

    def __enter__(self) -> Self:
        return self if self._root is not None else self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = f"port={self._port}" if self.running else "stopped"
        return f"<PgServer {self.dbname} {state}>"

    # -- cluster life cycle -----------------------------------------------------------------

    def _initdb(self) -> None:
        root = self._require_root()
        identity = self._require_identity()
        (root / "sock").mkdir()
        self.log_path.touch()
        for path in (root, root / "sock", self.log_path):
            identity.chown(path)
        began = time.perf_counter()
        self._run(
            [
                str(self._require_binaries().initdb),
                "--pgdata",
                str(self.data_dir),
                "--username",
                SUPERUSER,
                "--auth=trust",
                "--encoding=UTF8",
                "--locale=C",
                "--no-sync",  # a throwaway cluster need not survive a power cut
                "--no-instructions",
            ],
            what="initdb",
        )
        self.timings["initdb"] = time.perf_counter() - began

    def _start_on_free_port(self, attempts: int = 3) -> None:
        began = time.perf_counter()
        for attempt in range(1, attempts + 1):
            port = _free_port()
            self._launch(port)
            try:
                self._wait_until_ready()
            except PgServerError:
                # Another process may take the port between probing and binding; retry.
                if attempt < attempts and "could not bind" in self._log_tail():
                    self._proc = None
                    continue
                raise
            self._port = port
            self.timings["start"] = time.perf_counter() - began
            return

    def _launch(self, port: int) -> None:
        self._port = port
        settings = {
            **self._settings,
            "listen_addresses": "127.0.0.1",
            "unix_socket_directories": str(self._require_root() / "sock"),
        }
        args = [str(self._require_binaries().postgres), "-D", str(self.data_dir), "-p", str(port)]
        for key, value in settings.items():
            args += ["-c", f"{key}={value}"]
        with self.log_path.open("ab") as log:
            try:
                self._proc = subprocess.Popen(
                    args,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    cwd=self._require_root(),
                    env=_server_env(),
                    start_new_session=True,
                    preexec_fn=_parent_death_signal(),
                    **self._require_identity().subprocess_kwargs(),
                )
            except OSError as exc:
                raise PgServerError(f"could not launch {args[0]}: {exc}") from exc

    def _wait_until_ready(self) -> None:
        deadline = time.monotonic() + self._startup_timeout
        last_error: Exception | None = None
        while time.monotonic() < deadline:
            if not self.running:
                raise PgServerError(f"PostgreSQL exited during startup; {self._log_tail()}")
            try:
                psycopg.connect(self._conninfo("postgres"), connect_timeout=2).close()
                return
            except psycopg.OperationalError as exc:  # not listening yet, or still recovering
                last_error = exc
                time.sleep(0.05)
        self._kill()
        raise PgServerError(
            f"PostgreSQL did not accept connections within {self._startup_timeout:.0f}s "
            f"(last error: {last_error}); {self._log_tail()}"
        )

    def _pg_ctl_stop(self, mode: ShutdownMode) -> bool:
        """Stop via pg_ctl and reap the postmaster; False when it is still running after."""
        assert self._proc is not None
        with contextlib.suppress(PgServerError):
            self._run(
                [
                    str(self._require_binaries().pg_ctl),
                    "stop",
                    "--pgdata",
                    str(self.data_dir),
                    "--mode",
                    mode,
                    "--wait",
                    "--timeout",
                    "30",
                ],
                what=f"pg_ctl stop -m {mode}",
                timeout=40,
            )
        try:
            self._proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            return False
        return True

    def _kill(self) -> None:
        """SIGQUIT (immediate shutdown), then SIGKILL the postmaster and any children left."""
        proc = self._proc
        if proc is None or proc.poll() is not None:
            return
        # Backends call setsid(), so killing the postmaster's process group misses them.
        children = _child_pids(proc.pid)
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGQUIT)
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=5)
        for pid in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    # -- helpers ----------------------------------------------------------------------------

    def _admin(self, statement: sql.Composed) -> None:
        try:
            with psycopg.connect(self._conninfo("postgres"), autocommit=True) as conn:
                conn.execute(statement)
        except psycopg.Error as exc:
            raise PgServerError(f"{statement.as_string(None)} failed: {exc}") from exc

    def _conninfo(self, dbname: str) -> str:
        return psycopg.conninfo.make_conninfo(
            host="127.0.0.1", port=self.port, user=SUPERUSER, dbname=dbname
        )

    def _run(self, args: Sequence[str], *, what: str, timeout: float = 120) -> None:
        try:
            result = subprocess.run(
                args,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                cwd=self._require_root(),
                env=_server_env(),
                timeout=timeout,
                check=False,
                **self._require_identity().subprocess_kwargs(),
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise PgServerError(f"{what} could not run: {exc}") from exc
        if result.returncode != 0:
            output = (result.stderr or result.stdout).strip()
            raise PgServerError(f"{what} failed (exit {result.returncode}): {output}")

    def _log_tail(self, lines: int = 15) -> str:
        try:
            text = self.log_path.read_text(errors="replace").splitlines()[-lines:]
        except (OSError, PgServerError):
            return "no server log"
        return f"server log {self.log_path} ends:\n" + "\n".join(text)

    def _require_root(self) -> Path:
        if self._root is None:
            raise PgServerError("the server has not been started (or was stopped)")
        return self._root

    def _require_binaries(self) -> PgBinaries:
        assert self._binaries is not None, "set in start()"
        return self._binaries

    def _require_identity(self) -> _Identity:
        assert self._identity is not None, "set in start()"
        return self._identity


def _check_identifier(name: str) -> None:
    # PostgreSQL silently truncates longer names, which would break url_for(name).
    if not name or len(name.encode()) > _MAX_IDENTIFIER_BYTES:
        raise ValueError(f"database name must be 1..63 bytes, got {name!r}")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _server_env() -> dict[str, str]:
    # PG* variables (PGDATA, PGPORT, ...) would redirect pg_ctl; the C locale keeps the
    # server quiet about locales the postgres user may not have.
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env.update(LC_ALL="C", LANG="C")
    return env


def _child_pids(parent: int) -> list[int]:
    """Direct children of ``parent`` (Linux /proc); empty elsewhere."""
    children = []
    for stat_file in glob.glob("/proc/[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            # "pid (comm) state ppid ...": comm may hold spaces, so split after the ")".
            fields = Path(stat_file).read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) == parent:
                children.append(int(Path(stat_file).parent.name))
    return children


def _parent_death_signal() -> Any:
    """A preexec_fn that makes the postmaster get SIGQUIT (immediate shutdown) if we die.

    Linux ties the signal to the *thread* that forked, so it is only armed from the main
    thread; a server started from a worker thread would otherwise die with that thread.
    It runs after subprocess has switched user, which would otherwise clear the setting.
    """
    if sys.platform != "linux" or threading.current_thread() is not threading.main_thread():
        return None
    libc = ctypes.CDLL(None, use_errno=True)
    parent = os.getpid()

    def arm() -> None:
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGQUIT)
        if os.getppid() != parent:  # we died before the signal was armed
            os.kill(os.getpid(), signal.SIGKILL)

    return arm
