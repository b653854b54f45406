"""Processes and /proc for the side-by-side bench: every child is registered, gets a
parent-death signal, and is stopped on exit; bounded waits only."""

import ctypes
import os
import pwd
import resource
import selectors
import shlex
import signal
import socket
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.abspath(os.path.join(HERE, "..", ".."))
HOST = "127.0.0.1"
DB = "bench"
USER = "bench"
PASSWORD = "bench"
POOL_SIZE = 20
MAX_CLIENT_CONN = 11000
NOFILE_WANTED = 65536
IS_ROOT = os.geteuid() == 0
CLK_TCK = os.sysconf("SC_CLK_TCK")

_libc = ctypes.CDLL(None, use_errno=True)
PR_SET_PDEATHSIG = 1


class BenchError(Exception):
    """A fatal problem: the run cannot go on."""


# --------------------------------------------------------------------------------------
# Processes: every child is registered, gets a parent-death signal, and is stopped on exit.


class Procs:
    """Children, each the leader of its own process group (so a Ctrl-C on the terminal
    reaches only this script, which then stops them in order)."""

    def __init__(self):
        self.live = []  # (name, Popen, stop signal, signal the whole group?)

    def spawn(self, name, argv, *, as_pg=False, stop_sig=signal.SIGTERM, death_sig=signal.SIGKILL,
              group_stop=False, **kw):
        parent = os.getpid()

        def pre():
            # Runs in the child after the uid switch, so the parent-death signal survives.
            _libc.prctl(PR_SET_PDEATHSIG, int(death_sig), 0, 0, 0)
            if os.getppid() != parent:
                os._exit(1)

        if as_pg and IS_ROOT:
            pg = pwd.getpwnam("postgres")
            kw.update(user=pg.pw_uid, group=pg.pw_gid, extra_groups=[])
        p = subprocess.Popen(argv, preexec_fn=pre, start_new_session=True, **kw)
        self.live.append((name, p, stop_sig, group_stop))
        return p

    def stop(self, p, timeout=10.0):
        for i, (name, q, sig, group) in enumerate(self.live):
            if q is p:
                del self.live[i]
                _stop_one(name, q, sig, group, timeout)
                return

    def stop_all(self):
        # Newest first: clients before poolers before PostgreSQL.
        while self.live:
            name, p, sig, group = self.live.pop()
            _stop_one(name, p, sig, group, 10.0)


def _stop_one(name, p, sig, group, timeout):
    """Signals a child (or its whole process group), waits, then SIGKILLs the group."""
    if p.poll() is not None:
        return
    try:
        if group:
            os.killpg(p.pid, sig)
        else:
            p.send_signal(sig)
        p.wait(timeout=timeout)
        return
    except subprocess.TimeoutExpired:
        print(f"bench: {name} (pid {p.pid}) ignored signal {sig}; killing it", file=sys.stderr)
    except ProcessLookupError:
        return
    try:
        # Unreaped, so the pid (= process group id) cannot have been reused.
        os.killpg(p.pid, signal.SIGKILL)
        p.wait(timeout=10)
    except ProcessLookupError:
        pass
    except subprocess.TimeoutExpired:
        print(f"bench: {name} (pid {p.pid}) did not die", file=sys.stderr)


PROCS = Procs()


def run(argv, *, timeout, as_pg=False, check=True, env=None, cwd=None):
    """Runs a command to completion (bounded); returns CompletedProcess with text output."""
    p = PROCS.spawn(argv[0], argv, as_pg=as_pg, group_stop=True, stdin=subprocess.DEVNULL,
                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=cwd)
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        PROCS.stop(p, timeout=2)
        try:
            _, err = p.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            err = ""
        raise BenchError(f"{shlex.join(argv)} did not finish within {timeout} s\n{(err or '')[-2000:]}")
    finally:
        PROCS.stop(p, timeout=2)
    cp = subprocess.CompletedProcess(argv, p.returncode, out, err)
    if check and p.returncode != 0:
        raise BenchError(f"{shlex.join(argv)} failed ({p.returncode}):\n{out[-2000:]}\n{err[-2000:]}")
    return cp


def on_signal(signum, _frame):
    raise KeyboardInterrupt(f"signal {signum}")


# --------------------------------------------------------------------------------------
# Small helpers


def free_port():
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def wait_port(port, proc, name, log, deadline_s=30.0):
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise BenchError(f"{name} exited ({proc.returncode}) during startup:\n{tail(log)}")
        try:
            with socket.create_connection((HOST, port), timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    raise BenchError(f"{name} did not listen on {HOST}:{port} within {deadline_s} s:\n{tail(log)}")


def tail(path, n=30):
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-n:])
    except OSError as e:
        return f"<cannot read {path}: {e}>"


def write_file(path, text, pg_owned=True):
    with open(path, "w") as f:
        f.write(text)
    if pg_owned and IS_ROOT:
        pg = pwd.getpwnam("postgres")
        os.chown(path, pg.pw_uid, pg.pw_gid)


def rss_bytes(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise BenchError(f"no VmRSS for pid {pid}")


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    # fields[0] is field 3 (state); utime and stime are fields 14 and 15.
    return (int(fields[11]) + int(fields[12])) / CLK_TCK



def readline_bounded(p, timeout):
    """One line of a child's stdout, or '' after timeout (bounded wait)."""
    sel = selectors.DefaultSelector()
    sel.register(p.stdout, selectors.EVENT_READ)
    try:
        if not sel.select(timeout):
            return ""
        return p.stdout.readline()
    finally:
        sel.close()



def raise_nofile():
    """Raises the open-file limit (inherited by everything started here) as far as allowed."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard >= NOFILE_WANTED:
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, NOFILE_WANTED), hard))
    else:
        try:
            # Root with CAP_SYS_RESOURCE may raise the hard limit; in a container it may not.
            resource.setrlimit(resource.RLIMIT_NOFILE, (NOFILE_WANTED, NOFILE_WANTED))
        except (ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


