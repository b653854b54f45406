"""DDL between executions with asyncpg (PgBouncer #1038): every client keeps using the
same cached statement while ALTER TABLE changes its result type. PostgreSQL answers the
first execution on a stale plan with "cached plan must not change result type"; asyncpg
then drops its statement cache and prepares again (outside a transaction), and pgsluice
has invalidated the shared statement everywhere, so every call succeeds, with the new
columns, on every server, without RECONNECT."""

import asyncio

import asyncpg

from common import args, check, describe_exc, finish

QUERY = "SELECT * FROM ddl_t WHERE owner = $1"


async def main():
    a = args()

    def connect():
        return asyncpg.connect(
            host=a.host, port=a.port, database=a.db, user=a.user, timeout=30
        )

    admin = await connect()
    await admin.execute(
        "CREATE TABLE ddl_t (owner int PRIMARY KEY);"
        "INSERT INTO ddl_t SELECT generate_series(0, %d)" % (a.clients - 1)
    )
    conns = [await connect() for _ in range(a.clients)]

    async def use(owner, conn, columns, what):
        for _ in range(a.rounds):
            row = await conn.fetchrow(QUERY, owner)
            check(row["owner"] == owner, "%s: client %d got %r" % (what, owner, row))
            check(
                len(row) == columns,
                "%s: client %d: %d columns, want %d" % (what, owner, len(row), columns),
            )
            # In a transaction too (asyncpg cannot retry there: the plan is fresh by now).
            async with conn.transaction():
                row = await conn.fetchrow(QUERY, owner)
                check(
                    row["owner"] == owner and len(row) == columns,
                    "%s in a transaction: %r" % (what, row),
                )

    async def one(owner, conn, columns, what):
        try:
            await use(owner, conn, columns, what)
            return None
        except Exception:
            return "client %d (%s):\n%s" % (owner, what, describe_exc())

    results = []
    for gen in range(4):
        results += await asyncio.gather(
            *(one(i, c, 1 + gen, "generation %d" % gen) for i, c in enumerate(conns))
        )
        await admin.execute(
            "ALTER TABLE ddl_t ADD COLUMN x%d int DEFAULT %d" % (gen, gen)
        )
    for c in conns:
        await c.close()
    await admin.close()
    finish(results, len(results))


asyncio.run(main())
