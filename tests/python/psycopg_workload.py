"""psycopg 3 with prepare_threshold=0 (every query prepared as a named statement on first
use) over a transaction-mode pool far smaller than the client count. Some clients also
run DISCARD ALL now and then: psycopg forgets its statements and prepares them again,
while the other clients' statements must keep working."""

import asyncio

import psycopg

from common import args, check, check_items, describe_exc, finish


async def client(a, owner):
    conn = await psycopg.AsyncConnection.connect(
        host=a.host,
        port=a.port,
        dbname=a.db,
        user=a.user,
        prepare_threshold=0,
        autocommit=True,
        connect_timeout=30,
    )
    try:
        for r in range(a.rounds):
            cur = await conn.execute(
                "SELECT owner, k, val FROM items WHERE owner = %s ORDER BY k", (owner,)
            )
            check_items(owner, await cur.fetchall(), "psycopg round %d" % r)
            cur = await conn.execute(
                "SELECT %s::int4 * 1000 + %s::int4", (owner, r)
            )
            (v,) = await cur.fetchone()
            check(v == owner * 1000 + r, "client %d round %d: sum %r" % (owner, r, v))
            async with conn.transaction():
                cur = await conn.execute(
                    "UPDATE counters SET n = n + 1 WHERE owner = %s RETURNING n",
                    (owner,),
                )
                (n,) = await cur.fetchone()
                check(n == r + 1, "client %d round %d: counter %r" % (owner, r, n))
                cur = await conn.execute(
                    "SELECT owner, k, val FROM items WHERE owner = %s ORDER BY k",
                    (owner,),
                )
                check_items(owner, await cur.fetchall(), "psycopg in tx round %d" % r)
            # A pipeline of prepared queries (Bind/Execute batches with one Sync).
            async with conn.pipeline():
                curs = []
                for k in range(3):
                    c = conn.cursor()
                    await c.execute(
                        "SELECT val FROM items WHERE owner = %s AND k = %s", (owner, k)
                    )
                    curs.append(c)
            for k, c in enumerate(curs):
                (val,) = await c.fetchone()
                check(
                    val == "o%dk%d" % (owner, k),
                    "client %d round %d pipeline: %r" % (owner, r, val),
                )
            if owner % 10 == 0 and r % 5 == 4:
                await conn.execute("DISCARD ALL", prepare=False)
            if owner % 10 == 3:
                # A tiny psycopg cache: it closes statements (protocol Close, libpq >= 17)
                # as it cycles through more of them than it keeps.
                conn.prepared_max = 2
                for j in range(4):
                    cur = await conn.execute(
                        "SELECT %%s::int4 + %d, %d" % (j, j), (owner,)
                    )
                    got = await cur.fetchone()
                    check(
                        got == (owner + j, j),
                        "client %d round %d closing cache: %r" % (owner, r, got),
                    )
        cur = await conn.execute("SELECT n FROM counters WHERE owner = %s", (owner,))
        (n,) = await cur.fetchone()
        check(n == a.rounds, "client %d: final counter %r" % (owner, n))
    finally:
        await conn.close()


async def main():
    a = args()

    async def one(owner):
        try:
            await client(a, owner)
            return None
        except Exception:
            return "client %d:\n%s" % (owner, describe_exc())

    results = await asyncio.gather(*(one(i) for i in range(a.clients)))
    finish(results, a.clients)


asyncio.run(main())
