"""asyncpg with its default statement cache (every query is a named, cached prepared
statement) over a transaction-mode pool far smaller than the client count."""

import asyncio

import asyncpg

from common import args, check, check_items, describe_exc, finish


async def client(a, owner):
    # Most clients keep asyncpg's default statement cache (100); every tenth one keeps 2,
    # so asyncpg closes statements (protocol Close) as it cycles through the queries.
    cache = 2 if owner % 10 == 3 else 100
    conn = await asyncpg.connect(
        host=a.host,
        port=a.port,
        database=a.db,
        user=a.user,
        timeout=30,
        statement_cache_size=cache,
    )
    try:
        # Explicitly prepared and reused across transactions (each may land on another
        # server); the rest goes through asyncpg's statement cache.
        echo = await conn.prepare("SELECT $1::int4 AS owner, $2::text AS tag")
        for r in range(a.rounds):
            rows = await conn.fetch(
                "SELECT owner, k, val FROM items WHERE owner = $1 ORDER BY k", owner
            )
            check_items(owner, rows, "asyncpg fetch round %d" % r)
            v = await conn.fetchval("SELECT $1::int4 * 1000 + $2::int4", owner, r)
            check(v == owner * 1000 + r, "client %d round %d: sum %r" % (owner, r, v))
            tag = "c%dr%d" % (owner, r)
            row = await echo.fetchrow(owner, tag)
            check(
                (row["owner"], row["tag"]) == (owner, tag),
                "client %d round %d: echo %r" % (owner, r, row),
            )
            async with conn.transaction():
                n = await conn.fetchval(
                    "UPDATE counters SET n = n + 1 WHERE owner = $1 RETURNING n", owner
                )
                check(n == r + 1, "client %d round %d: counter %r" % (owner, r, n))
                rows = await conn.fetch(
                    "SELECT owner, k, val FROM items WHERE owner = $1 ORDER BY k", owner
                )
                check_items(owner, rows, "asyncpg in transaction round %d" % r)
            # executemany pipelines Bind/Execute of one statement.
            await conn.executemany(
                "UPDATE items SET val = val WHERE owner = $1 AND k = $2",
                [(owner, k) for k in range(3)],
            )
        n = await conn.fetchval("SELECT n FROM counters WHERE owner = $1", owner)
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
