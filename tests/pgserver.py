"""A throwaway PostgreSQL server for the integration tests: initdb into a temp directory, start, stop, delete.

The server listens on 127.0.0.1 only, on a free port, with trust authentication and durability switched off
(fsync, synchronous commit, full-page writes): the data dies with the test session, so only speed matters.
PostgreSQL refuses to run as root, so under root every server command runs as the `postgres` system user.
"""

from __future__ import annotations

import atexit
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

import psycopg
from psycopg import sql

SEARCH_GLOB = "/usr/lib/postgresql/*/bin"
SERVER_USER = "postgres"
_REQUIRED = ("initdb", "pg_ctl")


class PostgresUnavailable(RuntimeError):
    """The PostgreSQL server binaries are not installed, or the server could not be started."""


def _version_key(bindir: Path) -> tuple[int, ...]:
    # /usr/lib/postgresql/<major>/bin: prefer the newest major version when several are installed.
    digits = "".join(ch if ch.isdigit() else " " for ch in bindir.parent.name).split()
    return tuple(int(d) for d in digits)


def find_pg_bindir() -> Path | None:
    """The directory holding `initdb` and `pg_ctl`: from PATH first, then the Debian/Ubuntu layout."""
    on_path = [shutil.which(name) for name in _REQUIRED]
    if all(on_path):
        dirs = {Path(p).parent for p in on_path if p}
        if len(dirs) == 1:
            return dirs.pop()
        # The two tools sit in different PATH directories (symlink farms): resolve to the real install.
        real = {Path(p).resolve().parent for p in on_path if p}
        if len(real) == 1:
            return real.pop()
    candidates = sorted((Path(p) for p in glob.glob(SEARCH_GLOB)), key=_version_key, reverse=True)
    for bindir in candidates:
        if all(os.access(bindir / name, os.X_OK) for name in _REQUIRED):
            return bindir
    return None


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now (the kernel picks it when binding port 0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


class PostgresServer:
    """A temporary PostgreSQL server; use as a context manager, or call `start()` and `stop()`.

    `stop()` is idempotent and also registered with `atexit`, so an interrupted session still removes the
    server process and its data directory.
    """

    host = "127.0.0.1"
    user = "postgres"

    def __init__(self, bindir: Path | None = None, *, start_timeout: float = 30.0) -> None:
        found = bindir or find_pg_bindir()
        if found is None:
            raise PostgresUnavailable(
                f"PostgreSQL server binaries ({', '.join(_REQUIRED)}) not found on PATH or in {SEARCH_GLOB}; "
                "install them with `apt-get install -y postgresql` (scripts/test.sh does this)"
            )
        self.bindir = found
        self.start_timeout = start_timeout
        self.port = 0
        self.root: Path | None = None
        self._running = False
        self._as_root = os.geteuid() == 0

    # -- lifecycle -------------------------------------------------------------------------------------

    @property
    def datadir(self) -> Path:
        assert self.root is not None, "server not started"
        return self.root / "data"

    @property
    def logfile(self) -> Path:
        assert self.root is not None, "server not started"
        return self.root / "server.log"

    def start(self) -> PostgresServer:
        if self._running:
            return self
        atexit.register(self.stop)
        try:
            self.root = Path(tempfile.mkdtemp(prefix="csbot-pg-"))
            if self._as_root:
                self._hand_over_to_server_user(self.root)
            self._run(
                "initdb", "-D", str(self.datadir), "-U", self.user, "--auth=trust",
                "--encoding=UTF8", "--locale=C", "--no-sync",
            )
            self._start_on_free_port()
            self._wait_until_accepting()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop the server at once (no checkpoint: the data is thrown away) and delete its directory."""
        try:
            if self._running:
                self._running = False
                subprocess.run(
                    self._command("pg_ctl", "-D", str(self.datadir), "-m", "immediate", "-w", "stop"),
                    cwd=self.root, capture_output=True, check=False, timeout=60,
                )
        finally:
            if self.root is not None:
                shutil.rmtree(self.root, ignore_errors=True)
                self.root = None
            atexit.unregister(self.stop)

    def __enter__(self) -> PostgresServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # -- databases -------------------------------------------------------------------------------------

    def url(self, database: str = "postgres") -> str:
        """SQLAlchemy URL of `database` on this server (psycopg 3 driver)."""
        return f"postgresql+psycopg://{self.user}@{self.host}:{self.port}/{database}"

    def connect(self, database: str = "postgres") -> psycopg.Connection[tuple[object, ...]]:
        """A raw autocommit connection, for DDL such as CREATE DATABASE that cannot run in a transaction."""
        return psycopg.connect(
            host=self.host, port=self.port, user=self.user, dbname=database, autocommit=True,
            connect_timeout=5,
        )

    def create_database(self, name: str, *, template: str | None = None) -> str:
        """Create database `name` (a copy of `template` when given) and return its SQLAlchemy URL."""
        stmt = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
        if template is not None:
            stmt = sql.SQL("{} TEMPLATE {}").format(stmt, sql.Identifier(template))
        with self.connect() as conn:
            conn.execute(stmt)
        return self.url(name)

    def drop_database(self, name: str) -> None:
        """Drop `name`, closing any connection a test left open on it."""
        with self.connect() as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))

    # -- internals -------------------------------------------------------------------------------------

    def _hand_over_to_server_user(self, root: Path) -> None:
        try:
            account = pwd.getpwnam(SERVER_USER)
        except KeyError as exc:
            raise PostgresUnavailable(
                f"running as root but there is no `{SERVER_USER}` system user to run PostgreSQL as "
                "(installing the `postgresql` package creates it)"
            ) from exc
        # mkdtemp makes the directory 0700 for root; the server user must own it to write data and sockets.
        os.chown(root, account.pw_uid, account.pw_gid)

    def _command(self, tool: str, *args: str) -> list[str]:
        cmd = [str(self.bindir / tool), *args]
        return ["runuser", "-u", SERVER_USER, "--", *cmd] if self._as_root else cmd

    def _run(self, tool: str, *args: str) -> None:
        proc = subprocess.run(
            self._command(tool, *args), cwd=self.root, capture_output=True, text=True, check=False,
            timeout=max(60.0, self.start_timeout),
        )
        if proc.returncode != 0:
            raise PostgresUnavailable(
                f"{tool} failed with exit code {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
            )

    def _start_on_free_port(self, attempts: int = 3) -> None:
        # Another process may grab the port between our probe and the server's bind; try a fresh one then.
        last_error: PostgresUnavailable | None = None
        for _ in range(attempts):
            self.port = free_port(self.host)
            options = " ".join(
                [
                    f"-c listen_addresses={self.host}",
                    f"-p {self.port}",
                    f"-c unix_socket_directories={self.root}",
                    "-c fsync=off",
                    "-c synchronous_commit=off",
                    "-c full_page_writes=off",
                ]
            )
            try:
                self._run(
                    "pg_ctl", "-D", str(self.datadir), "-l", str(self.logfile), "-o", options,
                    "-w", "-t", str(int(self.start_timeout)), "start",
                )
            except PostgresUnavailable as exc:
                log = self.logfile.read_text(errors="replace") if self.logfile.exists() else ""
                last_error = PostgresUnavailable(f"{exc}\nserver log:\n{log}")
                continue
            self._running = True
            return
        assert last_error is not None
        raise last_error

    def _wait_until_accepting(self) -> None:
        deadline = time.monotonic() + self.start_timeout
        while True:
            try:
                with self.connect() as conn:
                    conn.execute("SELECT 1")
                return
            except psycopg.OperationalError as exc:
                if time.monotonic() > deadline:
                    raise PostgresUnavailable(
                        f"PostgreSQL on port {self.port} did not accept connections: {exc}"
                    ) from exc
                time.sleep(0.1)
