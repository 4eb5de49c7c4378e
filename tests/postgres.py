"""A throw-away PostgreSQL server for tests: its own data directory, port and unix-socket directory.

``postgres_database()`` runs ``initdb`` in a fresh temporary directory, starts ``postgres`` on 127.0.0.1 on a
free port, creates one database and yields a :class:`PostgresServer` whose :attr:`~PostgresServer.url` is a
``postgresql+asyncpg://`` URL (what ``PREFECT_API_DATABASE_CONNECTION_URL`` takes). On exit the server is
stopped and the directory removed.

PostgreSQL refuses to run as root. As root, ``initdb`` and ``pg_ctl`` run as the ``postgres`` system user
(``runuser``, or ``su``) and the directory is handed to that user; as any other user they run as that user.
When the binaries or (as root) the ``postgres`` user are missing, :class:`PostgresUnavailable` says why, for a
test to skip with.

Examples:
    ```python
    with postgres_database() as pg:
        print(pg.url, pg.query("select version()"))
    ```
"""

from __future__ import annotations

import os
import pwd
import re
import shlex
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.deploy_helpers import free_port, tail

#: The system user Debian's ``postgresql`` package creates; the server runs as it when we are root.
SERVER_USER = "postgres"
#: The database superuser ``initdb`` creates (the same name whoever runs it, so URLs look alike).
SUPERUSER = "postgres"
#: Overrides where ``initdb``, ``pg_ctl`` and ``psql`` are looked for.
BINDIR_VARIABLE = "KLING_PREFECT_PG_BINDIR"


class PostgresUnavailable(RuntimeError):
    """PostgreSQL cannot be started on this machine; the message says why (binaries, user)."""


def find_bindir() -> Path:
    """The directory holding ``initdb``, ``pg_ctl`` and ``psql``: the newest major version wins.

    Raises:
        PostgresUnavailable: no such directory (Debian: ``apt-get install postgresql``).
    """
    override = os.environ.get(BINDIR_VARIABLE)
    candidates = [Path(override)] if override else []
    on_path = shutil.which("initdb")  # Debian keeps initdb off PATH, other systems do not
    if on_path:
        candidates.append(Path(on_path).parent)
    versioned = Path("/usr/lib/postgresql").glob("*/bin")
    candidates += sorted(versioned, key=lambda p: int(re.sub(r"\D", "", p.parent.name) or 0), reverse=True)
    for bindir in candidates:
        if all((bindir / tool).is_file() for tool in ("initdb", "pg_ctl", "psql")):
            return bindir
    raise PostgresUnavailable(
        "PostgreSQL binaries (initdb, pg_ctl, psql) not found in /usr/lib/postgresql/*/bin or on PATH "
        f"(set {BINDIR_VARIABLE}, or `apt-get install postgresql`)"
    )


def run_as_server_user() -> tuple[list[str], int | None, int | None]:
    """The command prefix that runs a server tool as a non-root user, and that user's uid and gid.

    Returns ``([], None, None)`` when we are not root: the tools run as ourselves.

    Raises:
        PostgresUnavailable: we are root and there is no ``postgres`` user, or no ``runuser``/``su``.
    """
    if os.geteuid() != 0:
        return [], None, None
    try:
        user = pwd.getpwnam(SERVER_USER)
    except KeyError:
        raise PostgresUnavailable(
            f"running as root and there is no {SERVER_USER!r} system user; PostgreSQL refuses to run as root "
            "(`apt-get install postgresql` creates the user, or run the tests as a non-root user)"
        ) from None
    runuser = shutil.which("runuser")
    if runuser:
        return [runuser, "-u", SERVER_USER, "--"], user.pw_uid, user.pw_gid
    su = shutil.which("su")
    if su:
        # su takes one shell command line: the caller's argv is quoted into it (see PostgresServer._tool).
        return [su, SERVER_USER, "-s", "/bin/sh", "-c"], user.pw_uid, user.pw_gid
    raise PostgresUnavailable("running as root and neither runuser nor su is available to drop to 'postgres'")


@dataclass
class PostgresServer:
    """One PostgreSQL server in ``root`` (data, sockets, log), listening on 127.0.0.1:``port``.

    Attributes:
        root: the temporary directory holding everything; removed by :meth:`stop`.
        port: the TCP port on 127.0.0.1.
        bindir: where ``initdb``, ``pg_ctl`` and ``psql`` are.
        database: the database :meth:`start` creates.
        prefix: the command prefix running server tools as the server user (empty unless we are root).
        startup_seconds: how long :meth:`start` took (initdb, start, create database).
    """

    root: Path
    port: int
    bindir: Path
    database: str = "prefect"
    prefix: Sequence[str] = ()
    startup_seconds: float | None = None

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def sockets(self) -> Path:
        return self.root / "sockets"

    @property
    def log(self) -> Path:
        return self.root / "postgres.log"

    @property
    def url(self) -> str:
        """The SQLAlchemy URL for the database, with asyncpg (Prefect's Postgres driver)."""
        return f"postgresql+asyncpg://{SUPERUSER}@127.0.0.1:{self.port}/{self.database}"

    def _tool(self, name: str, *args: str, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
        """Run a server tool (initdb, pg_ctl) as the server user; raise with its output when it fails."""
        argv = [str(self.bindir / name), *args]
        if self.prefix and self.prefix[-1] == "-c":  # su: one quoted command line
            command = [*self.prefix, shlex.join(argv)]
        else:
            command = [*self.prefix, *argv]
        done = subprocess.run(command, cwd=self.root, capture_output=True, text=True, timeout=timeout)
        if done.returncode != 0:
            raise RuntimeError(
                f"{name} {' '.join(args)} exited with {done.returncode}\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}"
                f"\n--- server log\n{tail(self.log)}"
            )
        return done

    def start(self) -> PostgresServer:
        """initdb, start the server and wait until it accepts connections, create :attr:`database`."""
        began = time.monotonic()
        # trust: a throw-away server on loopback; fsync off: nothing here has to survive a power cut.
        self._tool(
            "initdb", "-D", str(self.data), "-U", SUPERUSER, "--auth=trust", "-E", "UTF8", "--no-locale", "--no-sync"
        )
        options = (
            f"-h 127.0.0.1 -p {self.port} -k {self.sockets} -c fsync=off -c synchronous_commit=off "
            "-c full_page_writes=off"
        )
        self._tool("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-o", options, "-w", "-t", "60", "start")
        self.query(f'CREATE DATABASE "{self.database}"', database="postgres")
        self.startup_seconds = time.monotonic() - began
        return self

    def stop(self) -> None:
        """Stop the server (fast shutdown: open connections are ended) and remove :attr:`root`."""
        try:
            if (self.data / "postmaster.pid").exists():
                self._tool("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "-t", "30", "stop")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    def query(self, sql: str, *, database: str | None = None) -> list[list[str]]:
        """Run one SQL statement with ``psql`` over TCP; the rows as lists of text fields (NULL is ``""``)."""
        argv = [str(self.bindir / "psql"), "-h", "127.0.0.1", "-p", str(self.port), "-U", SUPERUSER]
        argv += ["-d", database or self.database, "-X", "-A", "-t", "-F", "\t", "-v", "ON_ERROR_STOP=1", "-c", sql]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=60)
        if done.returncode != 0:
            raise RuntimeError(f"psql {sql!r} exited with {done.returncode}: {done.stderr.strip()}")
        return [line.split("\t") for line in done.stdout.splitlines() if line]


@contextmanager
def postgres_database(database: str = "prefect") -> Iterator[PostgresServer]:
    """A fresh PostgreSQL server with one database, stopped and removed on exit.

    Raises:
        PostgresUnavailable: binaries or (as root) the ``postgres`` user are missing; nothing was started.
    """
    bindir = find_bindir()
    prefix, uid, gid = run_as_server_user()
    # Not under pytest's tmp_path: its parents are private to root, and the server user must reach its files.
    root = Path(tempfile.mkdtemp(prefix="kling-prefect-pg-"))
    (root / "sockets").mkdir()
    if uid is not None and gid is not None:
        for path in (root, root / "sockets"):
            os.chown(path, uid, gid)
    server = PostgresServer(root=root, port=free_port(), bindir=bindir, database=database, prefix=prefix)
    try:
        yield server.start()
    finally:
        server.stop()
