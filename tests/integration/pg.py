"""A real PostgreSQL 15 server for integration tests: a new cluster in a temporary directory,
listening on a free loopback port only, with a `suido` role (password, scram-sha-256) that owns
a `suido` database. Host connections are allowed from 127.0.0.1 only, with a password; the
helper itself administers the server over its Unix socket (in the cluster's own 0700 directory).

Tests run as root: the cluster belongs to the `postgres` system user and every server command
runs through `runuser -u postgres --` (PostgreSQL refuses to run as root).

    pg = PostgreSQL()          # initdb + start
    pg.write_conninfo(path)    # mode 0600 file with the libpq connection string
    pg.stop(); pg.start()      # an outage
    pg.destroy()               # stop and remove everything
"""
import os
import pathlib
import pwd
import re
import secrets
import shutil
import socket
import subprocess
import tempfile

PGBIN = pathlib.Path(os.environ.get("SUIDO_PGBIN", "/usr/lib/postgresql/15/bin"))


def _free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def available():
    """Why PostgreSQL cannot be used here, or None when it can."""
    if not (PGBIN / "initdb").exists():
        return f"{PGBIN}/initdb not found (scripts/install-deps.sh installs postgresql)"
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        return "no postgres system user"
    if os.geteuid() != 0:
        return "the PostgreSQL helper runs the server as the postgres user: needs root"
    return None


class PostgreSQL:
    def __init__(self, database="suido", user="suido"):
        why = available()
        if why:
            raise RuntimeError(why)
        self.database = database
        self.user = user
        self.password = secrets.token_urlsafe(18)
        self.port = _free_port()
        self.root = pathlib.Path(tempfile.mkdtemp(prefix="suido-pg-"))
        self.data = self.root / "data"
        self.sock = self.root / "sock"
        self.logfile = self.root / "postgresql.log"
        pw = pwd.getpwnam("postgres")
        self.sock.mkdir()
        for p in (self.root, self.sock):
            os.chown(p, pw.pw_uid, pw.pw_gid)
            os.chmod(p, 0o700)
        self._as_pg([str(PGBIN / "initdb"), "-D", str(self.data), "-U", "postgres",
                     "--auth-local=trust", "--auth-host=scram-sha-256", "-E", "UTF8",
                     "--locale=C.UTF-8", "--no-instructions"])
        # the only ways in: this helper on its private socket, and passwords from 127.0.0.1
        (self.data / "pg_hba.conf").write_text(
            "local all postgres trust\n"
            "host all all 127.0.0.1/32 scram-sha-256\n")
        with open(self.data / "postgresql.conf", "a") as f:
            f.write(f"\nlisten_addresses = '127.0.0.1'\nport = {self.port}\n"
                    f"unix_socket_directories = '{self.sock}'\n"
                    "password_encryption = 'scram-sha-256'\n"
                    "fsync = on\nmax_connections = 40\nshared_buffers = 32MB\n"
                    "log_min_messages = warning\n")
        self.start()
        self.psql(f"CREATE ROLE {user} LOGIN PASSWORD '{self.password}'")
        self.psql(f"CREATE DATABASE {database} OWNER {user}")

    # ---- server ----------------------------------------------------------------------------
    def _as_pg(self, argv, check=True, **kw):
        return subprocess.run(["runuser", "-u", "postgres", "--", *argv], check=check,
                              capture_output=True, text=True, timeout=120, **kw)

    def start(self):
        r = self._as_pg([str(PGBIN / "pg_ctl"), "-D", str(self.data), "-l", str(self.logfile),
                         "-w", "-t", "60", "start"], check=False)
        assert r.returncode == 0, f"PostgreSQL did not start: {r.stderr}\n{self.log()}"

    def stop(self, mode="fast"):
        r = self._as_pg([str(PGBIN / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "-t",
                         "60", "stop"], check=False)
        return r.returncode == 0

    def running(self):
        r = self._as_pg([str(PGBIN / "pg_ctl"), "-D", str(self.data), "status"], check=False)
        return r.returncode == 0

    def destroy(self):
        if self.data.exists() and self.running():
            self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)

    def log(self):
        try:
            return self.logfile.read_text(errors="replace")[-3000:]
        except (FileNotFoundError, PermissionError):
            return ""

    # ---- clients ---------------------------------------------------------------------------
    def psql(self, sql, database=None):
        """Runs sql as the superuser over the private socket; returns the rows as lists of
        strings (unaligned, tab-separated)."""
        r = self._as_pg([str(PGBIN / "psql"), "-h", str(self.sock), "-p", str(self.port),
                         "-U", "postgres", "-d", database or "postgres", "-X", "-q", "-A", "-t",
                         "-F", "\t", "-v", "ON_ERROR_STOP=1", "-c", sql], check=False)
        assert r.returncode == 0, f"psql {sql!r}: {r.stderr}"
        return [line.split("\t") for line in r.stdout.splitlines() if line]

    def query(self, sql):
        """Rows of sql in the suido database."""
        return self.psql(sql, self.database)

    def execute(self, sql, *args):
        """sql with `?` parameters (as sqlite3 takes them) in the suido database; rows as tuples
        of int, None or str, like sqlite3's for the archive's integer and text columns."""
        parts = sql.split("?")
        assert len(parts) == len(args) + 1, "one argument per ?"
        text = parts[0]
        for arg, rest in zip(args, parts[1:]):
            if arg is None:
                lit = "NULL"
            elif isinstance(arg, bool) or isinstance(arg, int):
                lit = str(int(arg))
            else:
                lit = "'" + str(arg).replace("'", "''") + "'"
            text += lit + rest
        r = self._as_pg([str(PGBIN / "psql"), "-h", str(self.sock), "-p", str(self.port),
                         "-U", "postgres", "-d", self.database, "-X", "-q", "-A", "-t",
                         "-F", "\t", "-P", "null=\\N", "-v", "ON_ERROR_STOP=1", "-c", text],
                        check=False)
        assert r.returncode == 0, f"psql {text!r}: {r.stderr}"

        def value(v):
            if v == "\\N":
                return None
            if re.fullmatch(r"-?[0-9]+", v):
                return int(v)
            return v
        return [tuple(value(v) for v in line.split("\t")) for line in r.stdout.splitlines()]

    def scalar(self, sql):
        rows = self.query(sql)
        return int(rows[0][0]) if rows and rows[0][0] != "" else 0

    def conninfo(self, password=None, port=None, database=None):
        return (f"host=127.0.0.1 port={port or self.port} dbname={database or self.database} "
                f"user={self.user} password={password or self.password} connect_timeout=5")

    def write_conninfo(self, path, mode=0o600, **kw):
        """Writes the connection string to path with the given mode; returns the path."""
        path = pathlib.Path(path)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write("# libpq connection string of the suido archive\n" + self.conninfo(**kw) + "\n")
        os.chmod(path, mode)
        return path

    def reset_database(self):
        """Drops and re-creates the suido database (empty)."""
        self.psql(f"DROP DATABASE IF EXISTS {self.database} WITH (FORCE)")
        self.psql(f"CREATE DATABASE {self.database} OWNER {self.user}")

    def create_database(self, name):
        self.psql(f"CREATE DATABASE {name} OWNER {self.user}")
