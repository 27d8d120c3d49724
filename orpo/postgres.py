"""A local PostgreSQL cluster for the team set-up (`orpo serve --db postgres`): the Prefect
server's database and the MLflow tracking store, in `<project home>/.run/`.

Layout (created once, reused by every later `orpo serve --db postgres`):

    .run/postgres/          the cluster (PGDATA), owned by the user the server runs as
    .run/postgres.log       the server's log
    .run/postgres.json      port, role, binaries: what `orpo stop` and the next serve read
    .run/postgres.pgpass    libpq password file (mode 0600): 127.0.0.1:*:*:orpo:<password>

Access: the server listens on 127.0.0.1 only (no Unix socket, no other interface); pg_hba.conf
admits one role, `orpo` (the cluster's superuser, owner of the databases `prefect` and
`mlflow`), from 127.0.0.1 with scram-sha-256. Its password is generated at initdb and kept only
in the 0600 password file: clients (Prefect's asyncpg, MLflow's psycopg2, psql) find it through
PGPASSFILE, so no connection URL carries it. That matters here because the tracking URI is
written into every cell's job.json and shown in process lists, where a password would leak.

PostgreSQL refuses to run as root: as root, the cluster belongs to the system user `postgres`
and every server command runs as that user (`runuser -u postgres --`), which therefore has to
be able to reach `.run/` (every folder above it needs o+x). As any other user the cluster is
that user's, and the commands run directly.
"""

from __future__ import annotations

import json
import os
import pwd
import re
import secrets
import shutil
import subprocess
import time
from pathlib import Path

HOST = "127.0.0.1"
ROLE = "orpo"
DATABASES = ("prefect", "mlflow")
DEFAULT_PORT = 5433  # not 5432: leaves a system PostgreSQL's default port alone
SYSTEM_USER = "postgres"  # who owns the cluster when we are root
INSTALL_HINT = "install it with `make postgresql` (Debian's postgresql package)"


class PostgresError(RuntimeError):
    """The cluster could not be set up or started; the message says why."""


# --- finding the binaries ---------------------------------------------------------------------


def find_bindir() -> Path | None:
    """Folder with initdb and pg_ctl: $ORPO_PG_BIN when set (only that), else the one on PATH,
    else the newest Debian install under /usr/lib/postgresql/<version>/bin (not on PATH)."""
    if env := os.environ.get("ORPO_PG_BIN"):
        candidates = [Path(env)]
    else:
        candidates = [Path(p).resolve().parent for p in [shutil.which("pg_ctl")] if p]
        versions = Path("/usr/lib/postgresql").glob("*/bin")
        candidates += sorted(versions, key=lambda p: _version(p.parent.name), reverse=True)
    for folder in candidates:
        if all((folder / tool).is_file() for tool in ("initdb", "pg_ctl", "postgres")):
            return folder
    return None


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(n) for n in re.findall(r"\d+", text)) or (0,)


def missing_reason() -> str | None:
    """Why a cluster cannot be made here, or None when it can."""
    if find_bindir() is None:
        return f"PostgreSQL (initdb, pg_ctl) is not installed; {INSTALL_HINT}"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam(SYSTEM_USER)
        except KeyError:
            return f"running as root, but there is no `{SYSTEM_USER}` user to run PostgreSQL"
    return None


# --- the cluster ------------------------------------------------------------------------------


class Cluster:
    def __init__(self, run_dir: Path):
        self.run = Path(run_dir)
        self.data = self.run / "postgres"
        self.log = self.run / "postgres.log"
        self.state_file = self.run / "postgres.json"
        self.pgpass = self.run / "postgres.pgpass"

    # state ---------------------------------------------------------------------------------
    def state(self) -> dict:
        try:
            return json.loads(self.state_file.read_text())
        except (OSError, ValueError):
            return {}

    @property
    def initialised(self) -> bool:
        return (self.data / "PG_VERSION").is_file()

    @property
    def port(self) -> int:
        return int(self.state().get("port", DEFAULT_PORT))

    def url(self, database: str, driver: str) -> str:
        """SQLAlchemy URL without a password (clients read it from PGPASSFILE). Name the driver:
        SQLAlchemy 2.1's default for plain postgresql:// is psycopg 3, which is not installed."""
        return f"postgresql+{driver}://{ROLE}@{HOST}:{self.port}/{database}"

    def client_env(self) -> dict[str, str]:
        """What a client process needs to find the password."""
        return {"PGPASSFILE": str(self.pgpass)}

    # running commands as the cluster's owner -------------------------------------------------
    def _bindir(self) -> Path:
        recorded = self.state().get("bindir")
        if recorded and (Path(recorded) / "pg_ctl").is_file():
            return Path(recorded)
        found = find_bindir()
        if found is None:
            raise PostgresError(f"PostgreSQL (initdb, pg_ctl) is not installed; {INSTALL_HINT}")
        return found

    def _as_owner(self, tool: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        """Run a PostgreSQL tool (or, for a name with a slash, that program) as the cluster's
        owner."""
        cmd = [tool if "/" in tool else str(self._bindir() / tool), *args]
        if os.geteuid() == 0:
            cmd = ["runuser", "-u", SYSTEM_USER, "--", *cmd]
        done = subprocess.run(cmd, capture_output=True, text=True, cwd="/")
        if check and done.returncode != 0:
            raise PostgresError(
                f"{Path(tool).name} {' '.join(args[:1])} failed (exit {done.returncode}):\n"
                f"{done.stdout}{done.stderr}{self._log_tail()}"
            )
        return done

    def _give_to_owner(self, path: Path) -> None:
        if os.geteuid() == 0:
            entry = pwd.getpwnam(SYSTEM_USER)
            os.chown(path, entry.pw_uid, entry.pw_gid)

    def _log_tail(self, lines: int = 15) -> str:
        try:
            tail = self.log.read_text(errors="replace").splitlines()[-lines:]
        except OSError:
            return ""
        return f"\nlast lines of {self.log}:\n" + "\n".join(tail)

    # set-up --------------------------------------------------------------------------------
    def init(self, port: int) -> None:
        """initdb the cluster once: role `orpo` with a generated password, scram-sha-256 from
        127.0.0.1 only, no Unix socket."""
        if reason := missing_reason():
            raise PostgresError(reason)
        if self.data.exists() and any(self.data.iterdir()):
            raise PostgresError(
                f"{self.data} exists but is not a PostgreSQL cluster (no PG_VERSION): move it "
                "away, or remove it to start with empty databases"
            )
        self.data.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._give_to_owner(self.data)
        if (
            os.geteuid() == 0
            and self._as_owner("/usr/bin/test", "-w", str(self.data), check=False).returncode
        ):
            raise PostgresError(
                f"PostgreSQL runs as the user `{SYSTEM_USER}`, which cannot reach {self.data}: "
                f"give the folders above it o+x (e.g. chmod o+x {self.run.parent}) or serve from "
                "a project home (ORPO_HOME) that it can reach"
            )
        password = secrets.token_urlsafe(24)  # [A-Za-z0-9_-]: nothing to escape in pgpass
        _write_private(self.pgpass, f"{HOST}:*:*:{ROLE}:{password}\n")
        pwfile = self.run / ".postgres-initdb.pw"
        _write_private(pwfile, password + "\n")
        self._give_to_owner(pwfile)
        try:
            self._as_owner(
                "initdb", "-D", str(self.data), "-U", ROLE, f"--pwfile={pwfile}",
                "--auth=scram-sha-256", "--encoding=UTF8", "--no-locale",
            )  # fmt: skip
        finally:
            pwfile.unlink(missing_ok=True)
        conf = self.data / "postgresql.conf"
        with conf.open("a") as f:
            f.write(
                "\n# orpo serve --db postgres: TCP on 127.0.0.1 only, no Unix socket\n"
                f"listen_addresses = '{HOST}'\n"
                "unix_socket_directories = ''\n"
                "max_connections = 200\n"  # Prefect + MLflow pools + every flow process's pool
            )
        hba = self.data / "pg_hba.conf"
        hba.write_text(
            "# orpo serve --db postgres: one role, from the loopback address, by password\n"
            "# TYPE  DATABASE  USER  ADDRESS       METHOD\n"
            f"host    all       {ROLE}  {HOST}/32  scram-sha-256\n"
        )
        self._give_to_owner(hba)
        self._save(port)

    def _save(self, port: int) -> None:
        state = {"port": port, "role": ROLE, "host": HOST, "bindir": str(self._bindir())}
        self.state_file.write_text(json.dumps(state, indent=2))

    def running(self) -> bool:
        if not self.initialised:
            return False
        return self._as_owner("pg_ctl", "status", "-D", str(self.data), check=False).returncode == 0

    def start(self, port: int | None = None) -> None:
        """Init if needed, start (on `port`, else the recorded one, else DEFAULT_PORT) unless
        running, and create the databases that are missing."""
        port = port or self.port
        if not self.initialised:
            self.init(port)
        if self.running():
            if port != self.port:
                raise PostgresError(
                    f"the cluster in {self.data} is running on port {self.port}, not {port}: "
                    "`orpo stop` first to move it"
                )
        else:
            self._save(port)
            if not self.log.exists():
                self.log.touch()
            self._give_to_owner(self.log)
            self._as_owner(
                "pg_ctl", "start", "-D", str(self.data), "-l", str(self.log), "-w", "-t", "120",
                "-o", f"-p {port}",
            )  # fmt: skip
            print(f"postgres: started on {HOST}:{port}, cluster {self.data}, log {self.log}")
        self.create_databases()

    def connect(self, database: str = "postgres", timeout: float = 30.0):
        import psycopg2

        deadline = time.time() + timeout
        while True:
            try:
                return psycopg2.connect(
                    host=HOST, port=self.port, user=ROLE, dbname=database,
                    passfile=str(self.pgpass), connect_timeout=5,
                )  # fmt: skip
            except psycopg2.OperationalError as err:
                if time.time() > deadline:
                    raise PostgresError(f"cannot connect to {HOST}:{self.port}: {err}") from err
                time.sleep(0.5)

    def create_databases(self) -> None:
        conn = self.connect()
        conn.autocommit = True  # CREATE DATABASE cannot run in a transaction
        try:
            with conn.cursor() as cur:
                for name in DATABASES:
                    cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
                    if cur.fetchone() is None:
                        cur.execute(f'CREATE DATABASE "{name}" OWNER "{ROLE}"')
                        print(f"postgres: created database {name}")
        finally:
            conn.close()

    def stop(self) -> bool:
        """Stop the server (fast shutdown: open sessions are ended); True when one was running."""
        if not self.running():
            return False
        self._as_owner("pg_ctl", "stop", "-D", str(self.data), "-m", "fast", "-w", "-t", "60")
        print(f"postgres: stopped (cluster {self.data})")
        return True


def _write_private(path: Path, text: str) -> None:
    """Write a file only its owner can read (created with 0600, never world-readable)."""
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
