#!/usr/bin/env python3
"""Side-by-side load bench: direct PostgreSQL, PgBouncer, pgsluice and a 1:1 relay in one run.

    python3 benches/side-by-side/run.py            # reference run: 10 s runs, 3 rounds
    python3 benches/side-by-side/run.py --quick    # smoke check: 3 s runs, 1 round

Builds pgsluice (release), starts a throwaway PostgreSQL cluster (as the `postgres` OS
user when run as root), initialises pgbench, starts Debian's pgbouncer (installed with
apt-get if missing) and pgsluice from the same pgbouncer.ini (only the port differs),
and the 1:1 relay floor (examples/relay_floor.rs; not with --no-floor), then runs every
case against every target interleaved, round after round (the floor only in the cases
where a 1:1 relay is comparable), and writes results/<date>-<host>.md and .svg.
Everything it starts is stopped on exit, error, Ctrl-C or SIGTERM; if the script itself
is killed, its children get a parent-death signal. See README.md in this directory.
"""

import argparse
import datetime
import glob
import hashlib
import json
import math
import os
import pwd
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time

from cases import CASES
from procs import (HERE, HOST, IS_ROOT, PROCS, REPO, BenchError, cpu_seconds, on_signal, raise_nofile,
                   readline_bounded, rss_bytes, run, tail, write_file)
from report import fmt_bytes, fmt_num, report, svg_chart
from targets import (DB, PASSWORD, POOL_SIZE, USER, Direct, Floor, Pooler, Postgres, build_floor,
                     build_pgsluice, ensure_pgbouncer, first_line, git_rev, loadavg, machine_info, make_tls_files,
                     pg_bin_dir, tls_ini_lines)

# --------------------------------------------------------------------------------------
# pgbench runs


def parse_pgbench(out, err):
    res = {}
    m = re.search(r"^tps = ([0-9.]+)", out, re.M)
    res["tps"] = float(m.group(1)) if m else None
    m = re.search(r"number of transactions actually processed: (\d+)", out)
    res["tx"] = int(m.group(1)) if m else None
    m = re.search(r"number of failed transactions: (\d+)", out)
    res["failed_tx"] = int(m.group(1)) if m else 0
    m = re.search(r"latency average = ([0-9.]+) ms", out)
    res["lat_avg_pgbench_ms"] = float(m.group(1)) if m else None
    aborted = re.findall(r"client (\d+) .*aborted", err)
    res["aborted_clients"] = len(set(aborted))
    errs = [l.strip() for l in err.splitlines() if "error" in l.lower() or "FATAL" in l or "ERROR" in l]
    res["errors"] = errs
    return res


def error_digest(errors, text):
    """The distinct error lines (with counts), or the output's last lines if none."""
    if not errors:
        return " | ".join(text.strip().splitlines()[-3:])
    counts = {}
    for e in errors:
        # "client 7 script 0 aborted in command 1 query 0: ERROR: ..." → the part after the colon.
        m = re.search(r"(ERROR|FATAL|PANIC):.*", e)
        key = " ".join((m.group(0) if m else re.sub(r"^pgbench: (error|fatal): ", "", e)).split())
        counts[key] = counts.get(key, 0) + 1
    top = sorted(counts.items(), key=lambda kv: -kv[1])[:3]
    return " | ".join(f"{k} (×{n})" if n > 1 else k for k, n in top)


def log_latencies(prefix):
    """Per-transaction latencies (µs) from pgbench --log files."""
    lat = []
    for path in glob.glob(prefix + ".*"):
        with open(path) as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 3 and parts[2].isdigit():
                    lat.append(int(parts[2]))
        os.unlink(path)
    return lat


def percentile(sorted_xs, q):
    if not sorted_xs:
        return None
    # Nearest rank: the smallest value with at least q of all values at or below it.
    i = min(len(sorted_xs), max(1, math.ceil(q * len(sorted_xs)))) - 1
    return sorted_xs[i]


class Bench:
    def __init__(self, args, root, pg, targets, pgbench):
        self.args = args
        self.root = root
        self.pg = pg
        self.targets = targets
        self.pgbench = pgbench
        self.runs = []  # dicts
        self.tls_targets = {}  # "client"/"both" → [PgBouncer, pgsluice] with those settings
        self.logdir = os.path.join(root, "pgbench-logs")
        os.mkdir(self.logdir)
        self.env = dict(os.environ, PGPASSWORD=PASSWORD, PGSSLMODE="disable", PGGSSENCMODE="disable",
                        PGAPPNAME="pgbench")

    def pgbench_argv(self, target, clients, args, duration, log_prefix=None):
        jobs = max(1, min(clients, os.cpu_count() or 1))
        argv = [self.pgbench, "-h", HOST, "-p", str(target.port), "-U", USER, "-n", "-c", str(clients),
                "-j", str(jobs), "-T", str(duration)] + args
        if log_prefix:
            argv += ["-l", f"--log-prefix={log_prefix}"]
        return argv + [DB]

    def one_run(self, case, target, rnd):
        duration = self.args.duration
        prefix = os.path.join(self.logdir, f"{case.key}-{target.name}-{rnd}") if case.latency else None
        argv = self.pgbench_argv(target, case.clients, case.args, duration, prefix)
        if not target.alive():
            rec = {"case": case.key, "target": target.name, "round": rnd, "ok": False,
                   "error": f"{target.name} is not running"}
            self.runs.append(rec)
            return rec
        cpu0 = cpu_seconds(target.pid) if target.pid else None
        t0 = time.monotonic()
        env = dict(self.env, PGSSLMODE="require") if case.tls else self.env
        p = PROCS.spawn("pgbench", argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                        stderr=subprocess.PIPE, text=True, env=env, cwd=self.logdir)
        timeout = duration + 120 + case.clients // 20
        try:
            out, err = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            PROCS.stop(p, timeout=5)
            try:
                out, err = p.communicate(timeout=10)
            except subprocess.TimeoutExpired:
                out, err = "", ""
            err = (err or "") + f"\nbench: pgbench killed after {timeout} s"
        PROCS.stop(p)
        wall = time.monotonic() - t0
        cpu1 = cpu_seconds(target.pid) if target.pid and target.alive() else None
        rec = {"case": case.key, "target": target.name, "round": rnd, "rc": p.returncode, "wall_s": wall}
        rec.update(parse_pgbench(out, err))
        rec["ok"] = p.returncode == 0 and rec["tps"] is not None and rec["aborted_clients"] == 0 \
            and not rec["failed_tx"]
        if not rec["ok"]:
            rec["error"] = f"exit {p.returncode}; " + error_digest(rec["errors"], err or out)
            if rec["aborted_clients"]:
                rec["error"] = f"{rec['aborted_clients']}/{case.clients} clients aborted; " + rec["error"]
        if cpu0 is not None and cpu1 is not None:
            rec["cpu_s"] = cpu1 - cpu0
            rec["cpu_util"] = rec["cpu_s"] / wall
            if rec.get("tx"):
                rec["cpu_us_per_tx"] = rec["cpu_s"] / rec["tx"] * 1e6
        if prefix:
            lat = sorted(log_latencies(prefix))
            if lat:
                rec["lat_avg_us"] = sum(lat) / len(lat)
                rec["lat_p99_us"] = percentile(lat, 0.99)
                rec["lat_n"] = len(lat)
        if case.balance:
            rec["balance"] = self.balance_check()
            if rec["balance"] != "ok":
                rec["ok"] = False
                rec["error"] = (rec.get("error", "") + " balance check: " + rec["balance"]).strip()
        self.runs.append(rec)
        return rec

    def balance_check(self):
        out = self.pg.psql(
            "SELECT (SELECT sum(abalance) FROM pgbench_accounts), (SELECT sum(bbalance) FROM pgbench_branches),"
            " (SELECT sum(tbalance) FROM pgbench_tellers), (SELECT coalesce(sum(delta), 0) FROM pgbench_history)",
            db=DB)
        a, b, t, h = (int(x) for x in out.split("|"))
        if a == b == t == h:
            return "ok"
        return f"MISMATCH accounts={a} branches={b} tellers={t} history={h}"

    def describe(self, rec):
        if not rec["ok"]:
            return f"FAILED: {rec.get('error', '?')[:200]}"
        s = f"{rec['tps']:,.0f} tps"
        if "lat_p99_us" in rec:
            s += f", avg {rec['lat_avg_us']:.0f} µs, p99 {rec['lat_p99_us']} µs"
        if "cpu_us_per_tx" in rec:
            s += f", {'relay' if rec['target'] == 'floor' else 'pooler'} {rec['cpu_us_per_tx']:.1f} µs CPU/tx"
        return s

    def run_case(self, case):
        targets = [t for t in self.targets if not (case.poolers_only and t.pid is None)
                   and (case.floor or t.name != "floor")]
        if case.tls:
            # The TLS pair has the same target names, so the report puts it beside the rest.
            targets = self.tls_targets[case.tls]
        width = max(10, max(len(t.label) for t in targets))
        for rnd in range(1, self.args.rounds + 1):
            for t in targets:
                rec = self.one_run(case, t, rnd)
                print(f"  [{case.key} round {rnd}] {t.label:{width}} {self.describe(rec)}", flush=True)
                time.sleep(self.args.pause)

    def warm_up(self):
        for t in self.targets:
            argv = self.pgbench_argv(t, POOL_SIZE, ["-S"], 2)
            r = run(argv, timeout=120, env=self.env, check=False)
            if r.returncode != 0:
                raise BenchError(f"warm-up through {t.label} failed:\n{r.stderr[-2000:]}")

    def idle_storm(self, pooler, n):
        """Holds n idle clients on a pooler; RSS before, while held, and after they left.
        A helper failure is recorded in the result, not raised."""
        helper = os.path.join(HERE, "idle_clients.py")
        errlog = os.path.join(self.root, f"idle_clients-{pooler.name}.log")
        before = rss_bytes(pooler.pid)
        argv = [sys.executable, helper, HOST, str(pooler.port), USER, DB, str(n), "--password", PASSWORD]
        rec = {"target": pooler.name, "n": n, "rss_before": before}
        with open(errlog, "w") as errf:
            p = PROCS.spawn("idle_clients", argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=errf, text=True)
        try:
            line = readline_bounded(p, 400)
            if line:
                rec.update(json.loads(line))
                time.sleep(2)  # let the pooler settle (login tasks finish, buffers released)
                rec["rss_held"] = rss_bytes(pooler.pid)
                p.stdin.write("close\n")
                p.stdin.flush()
                readline_bounded(p, 120)
                p.wait(timeout=60)
        except (OSError, ValueError, subprocess.TimeoutExpired) as e:
            rec.setdefault("errors", []).append(f"helper: {type(e).__name__}: {e}")
        finally:
            PROCS.stop(p)
        if "ready" not in rec:
            rec["ready"] = 0
            rec.setdefault("errors", []).append("idle client helper failed: " + tail(errlog, 5).strip())
        time.sleep(3)
        rec["rss_after"] = rss_bytes(pooler.pid) if pooler.alive() else None
        if rec.get("ready") and rec.get("rss_held") is not None:
            rec["bytes_per_client"] = (rec["rss_held"] - before) / rec["ready"]
        return rec


# --------------------------------------------------------------------------------------
# Main


def parse_args():
    ap = argparse.ArgumentParser(description="pgsluice vs PgBouncer vs direct PostgreSQL, one run, interleaved.")
    ap.add_argument("--quick", action="store_true", help="smoke check: 3 s runs, 1 round (labelled as such)")
    ap.add_argument("--duration", type=int, help="seconds per pgbench run (default 10; 3 with --quick)")
    ap.add_argument("--rounds", type=int, help="rounds per case (default 3; 1 with --quick)")
    ap.add_argument("--scale", type=int, default=10, help="pgbench -i scale (default 10)")
    ap.add_argument("--idle-clients", type=int, default=10000, help="idle connections per pooler (default 10000)")
    ap.add_argument("--auth", choices=["trust", "md5"], default="trust",
                    help="auth_type for both poolers and the bench role in pg_hba.conf (default trust)")
    ap.add_argument("--cases", help="comma-separated subset of: " + ",".join(c.key for c in CASES) + ",idle")
    ap.add_argument("--pause", type=float, default=1.0, help="seconds between runs (default 1)")
    ap.add_argument("--pgsluice-bin", help="use this pgsluice binary instead of building one")
    ap.add_argument("--no-floor", action="store_true",
                    help="leave out the 1:1 relay floor target (examples/relay_floor.rs)")
    ap.add_argument("--out-dir", default=os.path.join(HERE, "results"), help="where the .md and .svg go")
    ap.add_argument("--keep-tmp", action="store_true", help="keep the temp dir (logs, cluster) for debugging")
    a = ap.parse_args()
    if a.duration is None:
        a.duration = 3 if a.quick else 10
    if a.rounds is None:
        a.rounds = 1 if a.quick else 3
    if a.duration < 1 or a.rounds < 1:
        ap.error("--duration and --rounds must be at least 1")
    known = {c.key for c in CASES} | {"idle"}
    default = {c.key for c in CASES if not c.optional} | {"idle"}
    a.case_set = set(a.cases.split(",")) if a.cases else default
    if a.case_set - known:
        ap.error(f"unknown cases: {', '.join(sorted(a.case_set - known))}")
    return a


def main():
    args = parse_args()
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, on_signal)
    started = datetime.datetime.now()
    t_start = time.monotonic()
    command = "python3 " + shlex.join([os.path.relpath(os.path.abspath(sys.argv[0]), REPO)] + sys.argv[1:])
    root = tempfile.mkdtemp(prefix="pgsluice-bench-")
    os.chmod(root, 0o755)
    if IS_ROOT:
        try:
            pg = pwd.getpwnam("postgres")
            os.chown(root, pg.pw_uid, pg.pw_gid)
        except KeyError:
            pass  # reported below
    ok = False
    try:
        nofile = raise_nofile()
        if nofile < args.idle_clients + 1000:
            print(f"bench: RLIMIT_NOFILE is {nofile}; the idle case may fail", file=sys.stderr)
        if IS_ROOT:
            try:
                pwd.getpwnam("postgres")
            except KeyError:
                raise BenchError("running as root but there is no `postgres` OS user "
                                 "(useradd --system --user-group postgres)")
        bindir = pg_bin_dir()
        pgbench = os.path.join(bindir, "pgbench")
        pgbouncer = ensure_pgbouncer()
        exe = os.path.abspath(args.pgsluice_bin) if args.pgsluice_bin else build_pgsluice()
        # A copy the postgres user can surely execute, whatever the repo's permissions.
        sluice = os.path.join(root, "pgsluice")
        shutil.copy2(exe, sluice)
        os.chmod(sluice, 0o755)
        relay = None
        if not args.no_floor:
            relay = os.path.join(root, "relay_floor")
            shutil.copy2(build_floor(), relay)
            os.chmod(relay, 0o755)

        ctx = {"date": started.strftime("%Y-%m-%d"), "started": started.strftime("%Y-%m-%d %H:%M:%S"),
               "command": command, "machine": machine_info(), "load_start": loadavg(), "rev": git_rev(),
               "pgsluice_v": first_line(run([sluice, "-V"], timeout=30, check=False).stdout or "?"),
               "pgbouncer_v": first_line(run([pgbouncer, "-V"], timeout=30).stdout),
               "pgbench_v": first_line(run([pgbench, "-V"], timeout=30).stdout), "idle": []}

        print(f"bench: temp dir {root}", flush=True)
        tls_modes = sorted({c.tls for c in CASES if c.tls and c.key in args.case_set})
        tls_files = make_tls_files(root) if tls_modes else None
        pg = Postgres(bindir, root, args.auth)
        pg.start(tls_files)
        ctx["postgres_v"] = pg.version()
        ctx["pg_conf"] = pg.conf_extra
        print(f"bench: {ctx['postgres_v']} on {HOST}:{pg.port}", flush=True)
        pg.psql(f"SET password_encryption = 'md5'; CREATE ROLE {USER} LOGIN PASSWORD '{PASSWORD}'")
        pg.psql(f"CREATE DATABASE {DB} OWNER {USER}")
        print(f"bench: pgbench -i -s {args.scale}", flush=True)
        run([pgbench, "-i", "-q", "-s", str(args.scale), "-h", HOST, "-p", str(pg.port), "-U", USER, DB],
            timeout=1800, env=dict(os.environ, PGPASSWORD=PASSWORD))
        pg.psql("VACUUM ANALYZE", db=DB)

        secret = PASSWORD if args.auth == "trust" else "md5" + hashlib.md5((PASSWORD + USER).encode()).hexdigest()
        userlist = os.path.join(root, "userlist.txt")
        write_file(userlist, f'"{USER}" "{secret}"\n')
        bouncer = Pooler("pgbouncer", "PgBouncer", [pgbouncer], root, pg.port, args.auth, userlist)
        sl = Pooler("pgsluice", "pgsluice", [sluice], root, pg.port, args.auth, userlist)
        ctx["ini"] = bouncer.ini_text.replace(f"listen_port = {bouncer.port}",
                                              f"listen_port = {bouncer.port}  ; pgsluice: {sl.port}")
        bouncer.start()
        sl.start()
        print(f"bench: PgBouncer on {HOST}:{bouncer.port} (pid {bouncer.pid}), "
              f"pgsluice on {HOST}:{sl.port} (pid {sl.pid})", flush=True)
        floor = None
        if relay:
            floor = Floor(relay, root, pg.port)
            floor.start()
            print(f"bench: 1:1 relay floor on {HOST}:{floor.port} (pid {floor.pid})", flush=True)

        targets = [Direct(pg), bouncer, sl] + ([floor] if floor else [])
        bench = Bench(args, root, pg, targets, pgbench)
        for mode in tls_modes:
            lines = tls_ini_lines(mode, *tls_files)
            pair = [Pooler("pgbouncer", "PgBouncer", [pgbouncer], root, pg.port, args.auth, userlist, lines,
                           f"-tls-{mode}"),
                    Pooler("pgsluice", "pgsluice", [sluice], root, pg.port, args.auth, userlist, lines,
                           f"-tls-{mode}")]
            for p in pair:
                p.start()
            bench.tls_targets[mode] = pair
            ctx.setdefault("tls_ini", []).append(f"; TLS case '{mode}': extra lines for both poolers\n{lines}")
            print(f"bench: TLS ({mode}) PgBouncer on {HOST}:{pair[0].port}, pgsluice on {HOST}:{pair[1].port}",
                  flush=True)
        print("bench: warm-up", flush=True)
        bench.warm_up()

        if "idle" in args.case_set:
            print(f"bench: {args.idle_clients:,} idle clients per pooler", flush=True)
            for p in (bouncer, sl):
                r = bench.idle_storm(p, args.idle_clients)
                ctx["idle"].append(r)
                print(f"  [idle] {p.label:10} connected {r.get('ready', 0):,}, failed {r.get('failed', 0):,}, "
                      f"RSS {fmt_bytes(r['rss_before'])} → {fmt_bytes(r.get('rss_held'))} → "
                      f"{fmt_bytes(r.get('rss_after'))}, {fmt_num(r.get('bytes_per_client'))} B/client", flush=True)

        ctx["ran"] = []
        for case in CASES:
            if case.key not in args.case_set:
                continue
            print(f"bench: {case.title}", flush=True)
            bench.run_case(case)
            ctx["ran"].append(case.key)

        extra = ([floor] if floor else []) + [p for pair in bench.tls_targets.values() for p in pair]
        for p in [bouncer, sl] + extra:
            if not p.alive():
                raise BenchError(f"{p.label} died during the run:\n{tail(p.log)}")
        ctx["load_end"] = loadavg()
        ctx["elapsed"] = time.monotonic() - t_start

        os.makedirs(args.out_dir, exist_ok=True)
        host = re.sub(r"[^A-Za-z0-9_.-]", "_", ctx["machine"]["host"])
        stem = f"{ctx['date']}-{host}" + ("-quick" if args.quick else "")
        base = os.path.join(args.out_dir, stem)
        if os.path.exists(base + ".md"):
            stem += started.strftime("-%H%M%S")
            base = os.path.join(args.out_dir, stem)
        ctx["svg_name"] = stem + ".svg"
        labels = {t.name: t.label for t in targets}
        with open(base + ".svg", "w") as f:
            f.write(svg_chart(bench, [t.name for t in targets], labels))
        text = report(bench, ctx)
        with open(base + ".md", "w") as f:
            f.write(text)
        print(f"\nbench: wrote {os.path.relpath(base + '.md')} and {os.path.relpath(base + '.svg')}\n")
        # The summary tables to the terminal as well.
        summary = text.split("## Settings")[0]
        print(summary)
        ok = True
        return 0
    except BenchError as e:
        print(f"bench: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as e:
        print(f"\nbench: interrupted ({e}); cleaning up", file=sys.stderr)
        return 130
    finally:
        # Ignore further Ctrl-C while cleaning up, so the cleanup itself is not cut short.
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)
        PROCS.stop_all()
        if args.keep_tmp or not ok:
            if args.keep_tmp:
                print(f"bench: kept {root}", file=sys.stderr)
            else:
                print(f"bench: logs were in {root} (removed; use --keep-tmp to keep them)", file=sys.stderr)
        if not args.keep_tmp:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())

