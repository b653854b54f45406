"""Shared pieces of the Python client workloads (run by tests/python_clients.rs).

Every client `owner` has its own rows, made by the Rust harness before a workload starts:

    items(owner, k, val)   k = 0..ITEMS-1, val = 'o<owner>k<k>'
    counters(owner, n)     n = 0

Each workload asks for its own owner's rows and checks every row it gets back, so an answer
meant for another client (a wrong-row bug in the pooler) fails the run.
"""

import argparse
import sys
import traceback

ITEMS = 5


def args():
    p = argparse.ArgumentParser()
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--db", required=True)
    p.add_argument("--user", required=True)
    p.add_argument("--clients", type=int, default=50)
    p.add_argument("--rounds", type=int, default=20)
    return p.parse_args()


def expected_items(owner):
    return [(owner, k, "o%dk%d" % (owner, k)) for k in range(ITEMS)]


def check(cond, what):
    if not cond:
        raise AssertionError(what)


def check_items(owner, rows, where):
    got = [tuple(r) for r in rows]
    want = expected_items(owner)
    check(got == want, "%s: client %d got %r, want %r" % (where, owner, got, want))


def finish(results, clients):
    """results: one entry per client, None for success or a traceback string."""
    failed = [r for r in results if r is not None]
    for f in failed[:5]:
        print(f, file=sys.stderr)
    if failed:
        print("FAILED: %d of %d clients" % (len(failed), clients), file=sys.stderr)
        sys.exit(1)
    print("ok: %d clients" % clients)


def describe_exc():
    return traceback.format_exc()
