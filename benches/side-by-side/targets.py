"""The targets of the side-by-side bench: a throwaway PostgreSQL cluster, PgBouncer and
pgsluice (one pgbouncer.ini for both), the 1:1 relay floor, plus the machine and version
facts."""

import glob
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import time

from procs import (HOST, IS_ROOT, PROCS, REPO, BenchError, free_port, readline_bounded, run, tail, wait_port,
                   write_file)

DB = "bench"
USER = "bench"
PASSWORD = "bench"
POOL_SIZE = 20
MAX_CLIENT_CONN = 11000


def first_line(text):
    return text.strip().splitlines()[0] if text.strip() else "?"


# --------------------------------------------------------------------------------------
# Machine, binaries, versions


def machine_info():
    cpu = "?"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem = "?"
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                mem = f"{int(line.split()[1]) / (1 << 20):.1f} GiB"
                break
    return {
        "cpu": cpu,
        "nproc": os.cpu_count(),
        "memory": mem,
        "kernel": os.uname().release,
        "host": socket.gethostname(),
    }


def loadavg():
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def pg_bin_dir():
    best = None
    for d in glob.glob("/usr/lib/postgresql/*/bin"):
        try:
            v = tuple(int(x) for x in d.split("/")[-2].split("."))
        except ValueError:
            continue
        if os.path.isfile(os.path.join(d, "initdb")) and (best is None or v > best[0]):
            best = (v, d)
    if best is None:
        raise BenchError("no /usr/lib/postgresql/*/bin/initdb (apt-get install postgresql)")
    return best[1]


def ensure_pgbouncer():
    path = shutil.which("pgbouncer") or ("/usr/sbin/pgbouncer" if os.path.exists("/usr/sbin/pgbouncer") else None)
    if path:
        return path
    if not IS_ROOT:
        raise BenchError("pgbouncer is not installed and we are not root to apt-get install it")
    print("bench: installing pgbouncer with apt-get", flush=True)
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    r = run(["apt-get", "install", "-y", "-q", "pgbouncer"], timeout=900, check=False, env=env)
    if r.returncode != 0:
        run(["apt-get", "update", "-q"], timeout=900, env=env)
        run(["apt-get", "install", "-y", "-q", "pgbouncer"], timeout=900, env=env)
    # The package starts a system-wide pgbouncer on 6432; that one is not ours to touch.
    path = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"
    if not os.path.exists(path):
        raise BenchError("apt-get install pgbouncer did not provide a pgbouncer binary")
    return path


def cargo_build(kind, name):
    """`cargo build --release --<kind> <name>`; the path of the executable it made."""
    print(f"bench: cargo build --release --{kind} {name}", flush=True)
    r = run(["cargo", "build", "--release", f"--{kind}", name, "--message-format=json-render-diagnostics"],
            timeout=3600, cwd=REPO, check=False)
    exe = None
    for line in r.stdout.splitlines():
        try:
            msg = json.loads(line)
        except ValueError:
            continue
        if msg.get("reason") == "compiler-artifact" and msg.get("executable") and \
                msg.get("target", {}).get("name") == name:
            exe = msg["executable"]
    if r.returncode != 0 or not exe:
        raise BenchError(f"cargo build --release --{kind} {name} failed ({r.returncode}):\n{r.stderr[-4000:]}")
    return exe


def build_pgsluice():
    return cargo_build("bin", "pgsluice")


def build_floor():
    # A separate cargo invocation: the example pulls in the dev-dependencies, and building
    # it together with the binary could unify their features into pgsluice's build.
    return cargo_build("example", "relay_floor")


def git_rev():
    try:
        rev = subprocess.run(["git", "-C", REPO, "rev-parse", "--short=12", "HEAD"], capture_output=True,
                             text=True, timeout=30).stdout.strip()
        dirty = subprocess.run(["git", "-C", REPO, "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=30).stdout.strip()
        return rev + ("-dirty" if dirty else "") if rev else "?"
    except (OSError, subprocess.TimeoutExpired):
        return "?"


# --------------------------------------------------------------------------------------
# PostgreSQL


class Postgres:
    def __init__(self, bindir, root, auth):
        self.bindir = bindir
        self.root = root
        self.data = os.path.join(root, "data")
        self.sock = os.path.join(root, "sock")
        self.log = os.path.join(root, "postgres.log")
        self.auth = auth
        self.port = None
        self.proc = None

    def bin(self, name):
        return os.path.join(self.bindir, name)

    def start(self, tls_files=None):
        os.mkdir(self.sock)
        write_file(self.log, "")
        if IS_ROOT:
            pg = pwd.getpwnam("postgres")
            os.chown(self.sock, pg.pw_uid, pg.pw_gid)
        run([self.bin("initdb"), "-D", self.data, "-U", "postgres", "-E", "UTF8", "--locale=C",
             "--auth-local=trust", "--auth-host=trust", "--no-sync"], timeout=300, as_pg=True, cwd=self.root)
        write_file(os.path.join(self.data, "pg_hba.conf"),
                   "# written by benches/side-by-side/run.py\n"
                   "local all postgres trust\n"
                   f"host  all postgres {HOST}/32 trust\n"
                   f"host  all {USER} {HOST}/32 {self.auth}\n")
        self.conf_extra = (
            f"listen_addresses = '{HOST}'\n"
            f"unix_socket_directories = '{self.sock}'\n"
            "max_connections = 250\n"
            "shared_buffers = 256MB\n"
            "fsync = off\n"
            "synchronous_commit = off\n"
            "full_page_writes = off\n"
            "max_wal_size = 4GB\n"
            "checkpoint_timeout = 30min\n"
            "autovacuum = off\n"
            "log_min_messages = warning\n")
        if tls_files:
            self.conf_extra += f"ssl = on\nssl_cert_file = '{tls_files[0]}'\nssl_key_file = '{tls_files[1]}'\n"
        with open(os.path.join(self.data, "postgresql.conf"), "a") as f:
            f.write("\n# added by benches/side-by-side/run.py\n" + self.conf_extra)
        for attempt in range(3):
            self.port = free_port()
            logf = open(self.log, "a")
            # SIGQUIT on parent death: immediate shutdown, the backends go with it.
            self.proc = PROCS.spawn("postgres", [self.bin("postgres"), "-D", self.data, "-p", str(self.port)],
                                    as_pg=True, stop_sig=signal.SIGINT, death_sig=signal.SIGQUIT,
                                    stdin=subprocess.DEVNULL, stdout=logf, stderr=logf, cwd=self.root)
            logf.close()
            end = time.monotonic() + 60
            while time.monotonic() < end and self.proc.poll() is None:
                r = subprocess.run([self.bin("pg_isready"), "-q", "-h", HOST, "-p", str(self.port), "-t", "2"],
                                   timeout=10)
                if r.returncode == 0:
                    return
                time.sleep(0.1)
            if self.proc.poll() is None:
                PROCS.stop(self.proc)
                raise BenchError(f"postgres did not accept connections within 60 s:\n{tail(self.log)}")
            print(f"bench: postgres exited on port {self.port}; retrying\n{tail(self.log, 5)}", file=sys.stderr)
        raise BenchError(f"postgres failed to start:\n{tail(self.log)}")

    def psql(self, sql, db="postgres", user="postgres", timeout=600):
        env = dict(os.environ, PGPASSWORD=PASSWORD)
        r = run([self.bin("psql"), "-X", "-At", "-v", "ON_ERROR_STOP=1", "-h", HOST, "-p", str(self.port),
                 "-U", user, "-d", db, "-c", sql], timeout=timeout, env=env)
        return r.stdout.strip()

    def version(self):
        return first_line(run([self.bin("postgres"), "-V"], timeout=30).stdout)


# --------------------------------------------------------------------------------------
# Poolers


def make_tls_files(root):
    """A self-signed certificate for 127.0.0.1/localhost (PostgreSQL and both poolers use it)."""
    crt, key = os.path.join(root, "tls.crt"), os.path.join(root, "tls.key")
    run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-days", "2", "-subj", "/CN=localhost", "-addext",
         "subjectAltName=DNS:localhost,IP:127.0.0.1", "-keyout", key, "-out", crt], timeout=60)
    os.chmod(key, 0o600)
    if IS_ROOT:
        pg = pwd.getpwnam("postgres")
        for f in (crt, key):
            os.chown(f, pg.pw_uid, pg.pw_gid)
    return crt, key


def tls_ini_lines(tls, crt, key):
    """The TLS settings of a TLS case, the same for PgBouncer and pgsluice."""
    if not tls:
        return ""
    text = ("client_tls_sslmode = require\n"
            f"client_tls_cert_file = {crt}\n"
            f"client_tls_key_file = {key}\n")
    if tls == "both":
        text += "server_tls_sslmode = require\n"
    return text


def pooler_ini(pg_port, listen_port, auth, userlist, tls_lines=""):
    return (
        "; written by benches/side-by-side/run.py; the same file for PgBouncer and pgsluice\n"
        "[databases]\n"
        f"{DB} = host={HOST} port={pg_port} dbname={DB} user={USER}\n"
        "\n[pgbouncer]\n"
        f"listen_addr = {HOST}\n"
        f"listen_port = {listen_port}\n"
        "unix_socket_dir =\n"
        f"auth_type = {auth}\n"
        f"auth_file = {userlist}\n"
        "pool_mode = transaction\n"
        f"default_pool_size = {POOL_SIZE}\n"
        f"max_client_conn = {MAX_CLIENT_CONN}\n"
        "log_connections = 0\n"
        "log_disconnections = 0\n"
        "stats_period = 60\n"
        # Both poolers default to prefer; the bench cluster may have ssl=on for the TLS
        # cases, and only those cases should pay for TLS.
        + ("server_tls_sslmode = disable\n" if "server_tls_sslmode" not in tls_lines else "")
        + tls_lines
    )


def open_pg_log(path):
    """A new log file for a process that runs as the postgres user (owned by it when root)."""
    logf = open(path, "w")
    if IS_ROOT:
        pg = pwd.getpwnam("postgres")
        os.chown(path, pg.pw_uid, pg.pw_gid)
    return logf


class Pooler:
    def __init__(self, name, label, argv_prefix, root, pg_port, auth, userlist, tls_lines="", suffix=""):
        self.name = name
        self.label = label
        self.port = free_port()
        self.ini = os.path.join(root, f"{name}{suffix}.ini")
        self.log = os.path.join(root, f"{name}{suffix}.log")
        self.ini_text = pooler_ini(pg_port, self.port, auth, userlist, tls_lines)
        write_file(self.ini, self.ini_text)
        self.argv = argv_prefix + [self.ini]
        self.proc = None

    def start(self):
        logf = open_pg_log(self.log)
        self.proc = PROCS.spawn(self.name, self.argv, as_pg=True, stop_sig=signal.SIGTERM,
                                stdin=subprocess.DEVNULL, stdout=logf, stderr=logf)
        logf.close()
        wait_port(self.port, self.proc, self.name, self.log)

    @property
    def pid(self):
        return self.proc.pid

    def alive(self):
        return self.proc.poll() is None


class Direct:
    name = "direct"
    label = "direct"
    pid = None

    def __init__(self, pg):
        self.pg = pg

    @property
    def port(self):
        return self.pg.port

    def alive(self):
        return self.pg.proc.poll() is None


class Floor:
    """examples/relay_floor.rs: a 1:1 TCP relay to PostgreSQL that parses nothing (one
    upstream connection per client), the CPU and latency floor of any user-space pooler."""

    name = "floor"
    label = "1:1 relay (floor)"

    def __init__(self, exe, root, pg_port):
        self.port = free_port()
        self.log = os.path.join(root, "floor.log")
        self.argv = [exe, f"{HOST}:{self.port}", f"{HOST}:{pg_port}"]
        self.proc = None

    def start(self):
        logf = open_pg_log(self.log)
        # stdout is a pipe for the one "relay_floor listening on ..." line; nothing else goes there.
        self.proc = PROCS.spawn(self.name, self.argv, as_pg=True, stop_sig=signal.SIGTERM,
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=logf, text=True)
        logf.close()
        line = readline_bounded(self.proc, 30)
        if not line.startswith("relay_floor listening on"):
            try:
                self.proc.wait(timeout=2)  # an empty line is EOF: it is exiting
            except subprocess.TimeoutExpired:
                pass
            if self.proc.poll() is not None:
                raise BenchError(f"relay_floor exited ({self.proc.returncode}) during startup:\n{tail(self.log)}")
            raise BenchError(f"relay_floor did not report listening within 30 s ({line.strip()!r}):\n"
                             f"{tail(self.log)}")

    @property
    def pid(self):
        return self.proc.pid

    def alive(self):
        return self.proc.poll() is None
