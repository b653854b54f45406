"""The side-by-side bench's results file: markdown tables and a hand-written SVG chart."""

import statistics

from cases import CASE_BY_KEY, CASES
from targets import HOST


def median(xs):
    return statistics.median(xs) if xs else None


def fmt_num(x, digits=0):
    if x is None:
        return "—"
    return f"{x:,.{digits}f}"


def fmt_ratio(a, b):
    if a is None or b is None or b == 0:
        return "—"
    return f"{a / b:.2f}×"


def fmt_bytes(x):
    if x is None:
        return "—"
    if abs(x) >= 1 << 20:
        return f"{x / (1 << 20):,.1f} MiB"
    if abs(x) >= 1 << 10:
        return f"{x / (1 << 10):,.1f} KiB"
    return f"{x:,.0f} B"



def delta(a, b):
    return None if a is None or b is None else a - b


def summarize(bench, case_key, target):
    recs = [r for r in bench.runs if r["case"] == case_key and r["target"] == target]
    ok = [r for r in recs if r["ok"]]
    s = {"n": len(recs), "ok": len(ok), "errors": [r.get("error", "") for r in recs if not r["ok"]]}
    for k in ("tps", "lat_avg_us", "lat_p99_us", "cpu_us_per_tx", "cpu_s", "cpu_util"):
        vals = [r[k] for r in ok if r.get(k) is not None]
        s[k] = median(vals)
        s[k + "_all"] = [r.get(k) for r in recs]
    if s["ok"] == 0:
        s["tps"] = None
    return s


def cell_tps(s):
    if s is None:
        return "—"
    if s["ok"] == 0:
        return "**FAILED**" if s["n"] else "—"
    v = fmt_num(s["tps"])
    if s["ok"] < s["n"]:
        v += f" ({s['n'] - s['ok']}/{s['n']} rounds failed)"
    return v


def svg_chart(bench, names, labels):
    points = {}
    for t in names:
        pts = []
        for case in CASES:
            if case.group != "select":
                continue
            s = summarize(bench, case.key, t)
            if s["n"] and s["tps"] is not None:
                pts.append((case.clients, s["tps"]))
        points[t] = sorted(pts)
    xs = sorted({c.clients for c in CASES if c.group == "select"})
    ymax = max([y for pts in points.values() for _, y in pts] + [1.0])
    # A round upper bound.
    mag = 10 ** (len(str(int(ymax))) - 1)
    ytop = (int(ymax * 1.1 / mag) + 1) * mag
    # The legend column: 150 px, wider only for a longer label (the floor's).
    R = max(150, 60 + 7 * max(len(labels[t]) for t in names))
    W, H, L, T, B = 570 + R, 420, 80, 40, 60
    pw, ph = W - L - R, H - T - B

    def px(c):
        return L + pw * xs.index(c) / max(1, len(xs) - 1)

    def py(v):
        return T + ph * (1 - v / ytop)

    colors = {"direct": "#555555", "pgbouncer": "#1f77b4", "pgsluice": "#d62728", "floor": "#999999"}
    dashes = {"floor": ' stroke-dasharray="6 4"'}
    o = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" '
         'font-family="sans-serif" font-size="12">',
         f'<rect width="{W}" height="{H}" fill="white"/>',
         f'<text x="{L + pw / 2}" y="22" text-anchor="middle" font-size="15">'
         'pgbench -S throughput vs clients (pool 20, transaction mode)</text>']
    for i in range(6):
        v = ytop * i / 5
        y = py(v)
        o.append(f'<line x1="{L}" y1="{y:.1f}" x2="{L + pw}" y2="{y:.1f}" stroke="#dddddd"/>')
        o.append(f'<text x="{L - 8}" y="{y + 4:.1f}" text-anchor="end">{v:,.0f}</text>')
    for c in xs:
        x = px(c)
        o.append(f'<line x1="{x:.1f}" y1="{T}" x2="{x:.1f}" y2="{T + ph}" stroke="#eeeeee"/>')
        o.append(f'<text x="{x:.1f}" y="{T + ph + 18}" text-anchor="middle">{c:,}</text>')
    o.append(f'<line x1="{L}" y1="{T + ph}" x2="{L + pw}" y2="{T + ph}" stroke="black"/>')
    o.append(f'<line x1="{L}" y1="{T}" x2="{L}" y2="{T + ph}" stroke="black"/>')
    o.append(f'<text x="{L + pw / 2}" y="{H - 15}" text-anchor="middle">clients (pgbench -c; categories, not to scale)</text>')
    o.append(f'<text x="18" y="{T + ph / 2}" text-anchor="middle" '
             f'transform="rotate(-90 18 {T + ph / 2})">transactions per second (median)</text>')
    for i, t in enumerate(names):
        col = colors.get(t, "#2ca02c")
        dash = dashes.get(t, "")
        pts = points[t]
        if len(pts) > 1:
            path = " ".join(f"{px(c):.1f},{py(v):.1f}" for c, v in pts)
            o.append(f'<polyline points="{path}" fill="none" stroke="{col}" stroke-width="2"{dash}/>')
        for c, v in pts:
            o.append(f'<circle cx="{px(c):.1f}" cy="{py(v):.1f}" r="4" fill="{col}"><title>{labels[t]}, '
                     f'{c} clients: {v:,.0f} tps</title></circle>')
        ly = T + 20 + 22 * i
        o.append(f'<line x1="{L + pw + 20}" y1="{ly}" x2="{L + pw + 45}" y2="{ly}" stroke="{col}" '
                 f'stroke-width="2"{dash}/>')
        o.append(f'<circle cx="{L + pw + 32.5}" cy="{ly}" r="4" fill="{col}"/>')
        o.append(f'<text x="{L + pw + 52}" y="{ly + 4}">{labels[t]}</text>')
    o.append("</svg>")
    return "\n".join(o) + "\n"


def report(bench, ctx):
    a = bench.args
    names = [t.name for t in bench.targets]
    labels = {t.name: t.label for t in bench.targets}
    S = {(c.key, t): summarize(bench, c.key, t) for c in CASES for t in names}
    md = []
    title = f"# pgsluice vs PgBouncer vs direct PostgreSQL — {ctx['date']}, {ctx['machine']['host']}"
    md.append(title)
    md.append("")
    if a.quick:
        md.append("> **SMOKE RUN (`--quick`: short runs, one round). For checking that the tooling works; "
                  "these are not reference numbers.**")
        md.append("")
    md.append(f"Command: `{ctx['command']}`  ")
    md.append(f"Started {ctx['started']}, took {ctx['elapsed']:.0f} s. Each run {a.duration} s, {a.rounds} "
              f"round(s), targets interleaved within each round ({' → '.join(labels[n] for n in names)}); "
              "the table shows the median over rounds.")
    md.append("")
    if "floor" in names:
        md.append(f"{labels['floor']}: `examples/relay_floor.rs`, a TCP relay that parses nothing and opens one "
                  "PostgreSQL connection per client (no pooling), on one current-thread tokio runtime. Its CPU per "
                  "transaction and added latency are the floor of any user-space pooler on this machine (the "
                  "kernel's loopback TCP work and the runtime). It runs only in the cases "
                  + "; ".join(f"`{c.title}`" for c in CASES if c.floor) + "; elsewhere its cells show —.")
        md.append("")
    md.append("![TPS vs clients](" + ctx["svg_name"] + ")")
    md.append("")
    m = ctx["machine"]
    md += ["## Machine and versions", "", "| | |", "|---|---|",
           f"| CPU | {m['cpu']}, {m['nproc']} logical CPUs (shared by pgbench, PostgreSQL and the pooler) |",
           f"| Memory | {m['memory']} |",
           f"| Kernel | {m['kernel']} |",
           f"| Load average (1/5/15 min) at start / end | {ctx['load_start']} / {ctx['load_end']} |",
           f"| pgsluice | git {ctx['rev']}, `{ctx['pgsluice_v']}`, release build |",
           f"| PgBouncer | {ctx['pgbouncer_v']} |",
           f"| PostgreSQL | {ctx['postgres_v']} |",
           f"| pgbench | {ctx['pgbench_v']} |"]
    if "floor" in names:
        md.append(f"| {labels['floor']} | `examples/relay_floor.rs`, git {ctx['rev']}, release build |")
    md.append("")

    has_floor = "floor" in names

    def tps_row(case, note=""):
        d, b, s, f = (S[(case.key, n)] if n in names else None for n in ("direct", "pgbouncer", "pgsluice", "floor"))
        dt = d["tps"] if d and d["n"] else None
        bt = b["tps"] if b else None
        st = s["tps"] if s else None
        row = (f"| {case.title}{note} | {cell_tps(d) if d and d['n'] else '—'} | {cell_tps(b)} | {cell_tps(s)} "
               f"| {fmt_ratio(st, bt)} | {fmt_ratio(st, dt)} | {fmt_ratio(bt, dt)} |")
        if has_floor:
            ft = f["tps"] if f["n"] else None
            row += f" {cell_tps(f) if f['n'] else '—'} | {fmt_ratio(ft, bt)} |"
        return row

    hdr = ["| case | direct | PgBouncer | pgsluice | pgsluice ÷ PgBouncer | pgsluice ÷ direct | PgBouncer ÷ direct |",
           "|---|---:|---:|---:|---:|---:|---:|"]
    if has_floor:
        hdr = [hdr[0] + f" {labels['floor']} | floor ÷ PgBouncer |", hdr[1] + "---:|---:|"]
    md += ["## Throughput (transactions per second, median)", ""] + hdr
    for c in CASES:
        if c.key in ctx["ran"]:
            md.append(tps_row(c, " (logins/s)" if c.group == "connect" else ""))
    md.append("")

    if "select-c1" in ctx["ran"] or "select-c1000" in ctx["ran"]:
        md += ["## Latency (from pgbench per-transaction logs, median over rounds)", "",
               "| case | target | average | p99 | added average over direct | added p99 over direct |",
               "|---|---|---:|---:|---:|---:|"]
        for key in ("select-c1", "select-c1000"):
            if key not in ctx["ran"]:
                continue
            d = S[(key, "direct")]
            for n in names:
                s = S[(key, n)]
                if not s["n"]:
                    continue
                add_avg = add_p99 = "—"
                if n != "direct" and d["n"] and s["lat_avg_us"] is not None and d["lat_avg_us"] is not None:
                    add_avg = f"{s['lat_avg_us'] - d['lat_avg_us']:+.1f} µs"
                    add_p99 = f"{s['lat_p99_us'] - d['lat_p99_us']:+.0f} µs"
                avg = "FAILED" if not s["ok"] else f"{fmt_num(s['lat_avg_us'], 1)} µs"
                p99 = "FAILED" if not s["ok"] else f"{fmt_num(s['lat_p99_us'])} µs"
                md.append(f"| {CASE_BY_KEY[key].title} | {labels[n]} | {avg} | {p99} | {add_avg} | {add_p99} |")
        md.append("")

    if "tpcb-c100" in ctx["ran"]:
        md += ["## TPC-B balance check", "",
               "After every TPC-B run: sum(pgbench_accounts.abalance) = sum(pgbench_branches.bbalance) = "
               "sum(pgbench_tellers.tbalance) = sum(pgbench_history.delta).", "",
               "| target | result per round |", "|---|---|"]
        for n in names:
            recs = [r for r in bench.runs if r["case"] == "tpcb-c100" and r["target"] == n]
            if not recs:
                continue
            md.append(f"| {labels[n]} | {', '.join(r.get('balance', 'not checked') for r in recs)} |")
        md.append("")

    if ctx["idle"]:
        md += [f"## {a.idle_clients:,} idle client connections", "",
               "RSS from /proc/<pid>/status (VmRSS) before the storm, with all clients logged in and idle "
               "(2 s after the last login), and 3 s after they all disconnected.", "",
               "| pooler | connected | RSS before | RSS held | bytes per idle client | RSS after storm | "
               "after − before |", "|---|---:|---:|---:|---:|---:|---:|"]
        for r in ctx["idle"]:
            conn = f"{r.get('ready', 0):,}" + (f" ({r['failed']:,} failed)" if r.get("failed") else "")
            md.append(f"| {labels[r['target']]} | {conn} | {fmt_bytes(r['rss_before'])} | "
                      f"{fmt_bytes(r.get('rss_held'))} | {fmt_num(r.get('bytes_per_client'))} B | "
                      f"{fmt_bytes(r.get('rss_after'))} | {fmt_bytes(delta(r.get('rss_after'), r['rss_before']))} |")
        errs = [e for r in ctx["idle"] for e in r.get("errors", [])]
        if errs:
            md.append("")
            md.append("Idle-client login errors (samples): " + "; ".join(f"`{e}`" for e in errs[:5]))
        md.append("")

    poolers = [n for n in names if n not in ("direct", "floor")]
    fl = labels.get("floor")
    md += ["## Pooler CPU per transaction", "",
           "utime + stime of the pooler process (all threads) from /proc/<pid>/stat, from just before "
           "pgbench starts to just after it exits (its client logins included), ÷ transactions "
           "(clock-tick resolution: 10 ms per run). Core use = CPU seconds ÷ the run's wall time "
           "(1.00 = one core busy all the time)." + (f" The {fl} process is measured the same way."
                                                      if has_floor else ""), "",
           "| case | " + " | ".join(f"{labels[n]} CPU s / 100k tx" for n in poolers) +
           " | pgsluice ÷ PgBouncer | " + " | ".join(f"{labels[n]} µs / tx" for n in poolers) +
           " | " + " | ".join(f"{labels[n]} core use" for n in poolers) + " |" +
           (" floor CPU s / 100k tx | floor µs / tx | floor ÷ PgBouncer | floor core use |" if has_floor else ""),
           "|---|" + "---:|" * (3 * len(poolers) + 1 + (4 if has_floor else 0))]
    for c in CASES:
        if c.key not in ctx["ran"]:
            continue
        per = {n: S[(c.key, n)]["cpu_us_per_tx"] for n in poolers}
        cells = [fmt_num(per[n] / 10 if per[n] is not None else None, 2) for n in poolers]
        us = [fmt_num(per[n], 1) for n in poolers]
        util = [fmt_num(S[(c.key, n)]["cpu_util"], 2) for n in poolers]
        row = (f"| {c.title} | " + " | ".join(cells) +
               f" | {fmt_ratio(per.get('pgsluice'), per.get('pgbouncer'))} | " + " | ".join(us) +
               " | " + " | ".join(util) + " |")
        if has_floor:
            f = S[(c.key, "floor")]
            fper = f["cpu_us_per_tx"]
            row += (f" {fmt_num(fper / 10 if fper is not None else None, 2)} | {fmt_num(fper, 1)} | "
                    f"{fmt_ratio(fper, per.get('pgbouncer'))} | {fmt_num(f['cpu_util'], 2)} |")
        md.append(row)
    md.append("")

    md += ["## Issue 7 targets", "", "| target | measured | met? |", "|---|---|---|"]
    for line in targets_table(S, ctx):
        md.append(line)
    md.append("")

    failures = [r for r in bench.runs if not r["ok"]]
    if failures:
        md += ["## Failures", "", "Runs that did not complete cleanly (recorded, not hidden):", ""]
        for r in failures:
            md.append(f"- {CASE_BY_KEY[r['case']].title}, {labels[r['target']]}, round {r['round']}: "
                      f"`{r.get('error', '?')[:400]}`")
        md.append("")

    md += ["## Settings", "",
           "PgBouncer and pgsluice read the same pgbouncer.ini; only `listen_port` differs. pgbench runs with "
           f"`-n -j min(clients, nproc)` against `{HOST}`, `PGSSLMODE=disable`.", "", "```ini",
           ctx["ini"].rstrip(), "```", ""]
    if has_floor:
        md += [f"{labels['floor']}: `relay_floor {HOST}:<port> {HOST}:<PostgreSQL port>` (no configuration; "
               "pgbench's startup and PostgreSQL's authentication pass through it).", ""]
    if ctx.get("tls_ini"):
        md += ["TLS cases run against a second PgBouncer/pgsluice pair with these lines added (pgbench "
               "with `PGSSLMODE=require`; PostgreSQL has `ssl = on` with the same self-signed "
               "certificate):", "", "```ini", "\n".join(t.rstrip() for t in ctx["tls_ini"]), "```", ""]
    md += [
           "PostgreSQL (initdb defaults plus):", "", "```", ctx["pg_conf"].rstrip(), "```", ""]

    md += ["## All runs", "", "| case | target | round | tps | transactions | pooler CPU s | µs CPU / tx | "
           "avg latency | p99 latency | result |", "|---|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in bench.runs:
        md.append(
            f"| {r['case']} | {r['target']} | {r['round']} | {fmt_num(r.get('tps'))} | {fmt_num(r.get('tx'))} | "
            f"{fmt_num(r.get('cpu_s'), 2)} | {fmt_num(r.get('cpu_us_per_tx'), 1)} | "
            f"{fmt_num(r.get('lat_avg_us'), 1)} | {fmt_num(r.get('lat_p99_us'))} | "
            f"{'ok' if r['ok'] else 'FAILED'} |")
    md.append("")
    return "\n".join(md)


def targets_table(S, ctx):
    ran = ctx["ran"]
    out = []

    def verdict(ok):
        return "—" if ok is None else ("yes" if ok else "**no**")

    def get(key, n, field):
        s = S.get((key, n))
        return s[field] if s and s["n"] and s["ok"] else None

    floor = any(n == "floor" for _, n in S)

    if "select-c200" in ran:
        b, s = get("select-c200", "pgbouncer", "cpu_us_per_tx"), get("select-c200", "pgsluice", "cpu_us_per_tx")
        r = s / b if b and s is not None else None
        measured = "—" if r is None else f"{s:.1f} vs {b:.1f} µs = {r:.2f}×"
        if floor:
            # The relay cannot run 200 clients (one backend each); its ratio at 20 clients bounds the target.
            fb, f = get("select-c20", "pgbouncer", "cpu_us_per_tx"), get("select-c20", "floor", "cpu_us_per_tx")
            measured += ("; 1:1 relay floor (-S, 20 clients) —" if fb is None or f is None else
                         f"; 1:1 relay floor (-S, 20 clients) {f:.1f} vs {fb:.1f} µs = {f / fb:.2f}×")
        out.append(f"| pooler CPU per transaction ≤ 0.8 × PgBouncer's (-S, 200 clients) | {measured} | "
                   f"{verdict(r <= 0.8 if r is not None else None)} |")
        b, s = get("select-c200", "pgbouncer", "tps"), get("select-c200", "pgsluice", "tps")
        r = s / b if b and s is not None else None
        out.append(f"| 200 clients onto pool 20: TPS ≥ 1.15 × PgBouncer | {fmt_ratio(s, b)} | "
                   f"{verdict(r >= 1.15 if r is not None else None)} |")
    if "select-c1" in ran:
        d, s = get("select-c1", "direct", "lat_avg_us"), get("select-c1", "pgsluice", "lat_avg_us")
        add = s - d if d is not None and s is not None else None
        measured = "—" if add is None else f"{add:+.1f} µs"
        if floor:
            f = get("select-c1", "floor", "lat_avg_us")
            measured += f"; 1:1 relay floor {'—' if d is None or f is None else f'{f - d:+.1f} µs'}"
        out.append(f"| 1 client: added average latency over direct ≤ 20 µs | "
                   f"{measured} | {verdict(add <= 20 if add is not None else None)} |")
    if "connect-c8" in ran:
        b, s = get("connect-c8", "pgbouncer", "tps"), get("connect-c8", "pgsluice", "tps")
        r = s / b if b and s is not None else None
        out.append(f"| -C logins/s ≥ 1.2 × PgBouncer | {fmt_ratio(s, b)} | "
                   f"{verdict(r >= 1.2 if r is not None else None)} |")
    for r in ctx["idle"]:
        if r["target"] != "pgsluice":
            continue
        bpc = r.get("bytes_per_client")
        out.append(f"| memory per idle client ≤ 4 KB | {fmt_num(bpc)} B | "
                   f"{verdict(bpc <= 4096 if bpc is not None else None)} |")
        grown = delta(r.get("rss_held"), r["rss_before"])
        back = delta(r.get("rss_after"), r["rss_before"])
        ok = back <= max(0.1 * grown, 1 << 20) if grown is not None and back is not None else None
        out.append(f"| RSS returned after the {r['n']:,}-client storm (within 10% of the growth or 1 MiB) | "
                   f"after − before = {fmt_bytes(back)} of {fmt_bytes(grown)} grown | {verdict(ok)} |")
    if "prepared-c50" in ran and "simple-c50" in ran:
        p, s = get("prepared-c50", "pgsluice", "tps"), get("simple-c50", "pgsluice", "tps")
        ok = (p >= s) if p is not None and s is not None else (False if s is not None else None)
        out.append(f"| -M prepared through pgsluice ≥ -M simple through pgsluice (50 clients) | "
                   f"{'FAILED' if p is None else fmt_num(p)} vs {fmt_num(s)} tps | {verdict(ok)} |")
    if "select-c1000" in ran:
        b, s = get("select-c1000", "pgbouncer", "lat_p99_us"), get("select-c1000", "pgsluice", "lat_p99_us")
        out.append(f"| 1,000 clients: p99 latency ≤ PgBouncer's | {fmt_num(s)} vs {fmt_num(b)} µs | "
                   f"{verdict(s <= b if s is not None and b is not None else None)} |")
    return out
