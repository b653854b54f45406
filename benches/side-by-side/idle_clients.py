#!/usr/bin/env python3
"""Hold N idle PostgreSQL client connections open against one pooler.

Used by run.py for the idle-client memory case; stdlib only (asyncio, raw sockets).

    idle_clients.py HOST PORT USER DATABASE N [--password PW] [--concurrency K]

Each connection sends a protocol 3.0 startup packet, answers trust, cleartext or MD5
authentication, and waits for the first ReadyForQuery; then it stays idle. When all
logins have finished (or the overall deadline passed) one JSON line goes to stdout:

    {"ready": <logged in>, "failed": <gave up>, "errors": [<up to 5 samples>]}

Then the helper waits for a line (or EOF) on stdin, sends Terminate on every connection,
closes them, prints {"closed": n} and exits. Every wait is bounded.
"""

import argparse
import asyncio
import hashlib
import json
import resource
import sys

CONNECT_TIMEOUT = 10.0
LOGIN_TIMEOUT = 30.0
OVERALL_TIMEOUT = 300.0
ATTEMPTS = 3


class LoginError(Exception):
    pass


def startup_packet(user: str, database: str) -> bytes:
    body = (3 << 16).to_bytes(4, "big")
    for k, v in (("user", user), ("database", database), ("application_name", "idle")):
        body += k.encode() + b"\0" + v.encode() + b"\0"
    body += b"\0"
    return (len(body) + 4).to_bytes(4, "big") + body


def message(tag: bytes, body: bytes) -> bytes:
    return tag + (len(body) + 4).to_bytes(4, "big") + body


def error_text(body: bytes) -> str:
    fields = {}
    for part in body.split(b"\0"):
        if part:
            fields[chr(part[0])] = part[1:].decode(errors="replace")
    return f"{fields.get('S', 'ERROR')} {fields.get('C', '')}: {fields.get('M', '')}"


async def login(host, port, user, database, password):
    reader, writer = await asyncio.wait_for(
        asyncio.open_connection(host, port), CONNECT_TIMEOUT
    )
    try:
        writer.write(startup_packet(user, database))
        await writer.drain()
        while True:
            header = await reader.readexactly(5)
            tag, length = header[:1], int.from_bytes(header[1:5], "big")
            body = await reader.readexactly(length - 4)
            if tag == b"R":
                code = int.from_bytes(body[:4], "big")
                if code == 0:
                    continue
                if code == 3:
                    writer.write(message(b"p", (password or "").encode() + b"\0"))
                elif code == 5:
                    inner = hashlib.md5(((password or "") + user).encode()).hexdigest()
                    outer = hashlib.md5(inner.encode() + body[4:8]).hexdigest()
                    writer.write(message(b"p", b"md5" + outer.encode() + b"\0"))
                else:
                    raise LoginError(f"unsupported authentication request {code}")
                await writer.drain()
            elif tag == b"E":
                raise LoginError(error_text(body))
            elif tag == b"Z":
                return reader, writer
            # ParameterStatus, BackendKeyData, NoticeResponse: ignored.
    except BaseException:
        writer.close()
        raise


async def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("host")
    ap.add_argument("port", type=int)
    ap.add_argument("user")
    ap.add_argument("database")
    ap.add_argument("n", type=int)
    ap.add_argument("--password")
    ap.add_argument("--concurrency", type=int, default=100)
    args = ap.parse_args()

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < args.n + 100:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

    conns = []
    errors = []
    failed = 0
    sem = asyncio.Semaphore(args.concurrency)

    async def one():
        nonlocal failed
        async with sem:
            last = None
            for _ in range(ATTEMPTS):
                try:
                    conns.append(
                        await asyncio.wait_for(
                            login(args.host, args.port, args.user, args.database, args.password),
                            LOGIN_TIMEOUT,
                        )
                    )
                    return
                except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError, LoginError) as e:
                    last = e
                    await asyncio.sleep(0.2)
            failed += 1
            if len(errors) < 5:
                errors.append(f"{type(last).__name__}: {last}")

    tasks = [asyncio.ensure_future(one()) for _ in range(args.n)]
    done, pending = await asyncio.wait(tasks, timeout=OVERALL_TIMEOUT)
    for t in pending:
        t.cancel()
    if pending:
        failed += len(pending)
        errors.append(f"{len(pending)} logins still pending after {OVERALL_TIMEOUT:.0f} s")
        await asyncio.gather(*pending, return_exceptions=True)
    print(json.dumps({"ready": len(conns), "failed": failed, "errors": errors}), flush=True)

    # Hold until told to close (a line or EOF on stdin); bounded by the caller's kill.
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, sys.stdin.readline)

    for _, writer in conns:
        try:
            writer.write(message(b"X", b""))
            writer.close()
        except OSError:
            pass
    if conns:
        closing = [asyncio.ensure_future(w.wait_closed()) for _, w in conns]
        _, late = await asyncio.wait(closing, timeout=10)
        for t in late:
            t.cancel()
        await asyncio.gather(*closing, return_exceptions=True)
    print(json.dumps({"closed": len(conns)}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
