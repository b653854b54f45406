"""SQLAlchemy 2 on psycopg 3 (prepare_threshold=0, so every statement SQLAlchemy runs is a
named prepared statement) with one thread per client over a transaction-mode pool far
smaller than the client count. Core Table objects and text() queries, engine.begin()
transactions, and SQLAlchemy's own connection pool returning connections with ROLLBACK."""

import threading

from sqlalchemy import (
    Column,
    Integer,
    MetaData,
    Table,
    Text,
    bindparam,
    create_engine,
    select,
    text,
    update,
)

from common import args, check, check_items, describe_exc, finish

meta = MetaData()
items = Table(
    "items",
    meta,
    Column("owner", Integer, primary_key=True),
    Column("k", Integer, primary_key=True),
    Column("val", Text),
)
counters = Table(
    "counters",
    meta,
    Column("owner", Integer, primary_key=True),
    Column("n", Integer),
)


def client(engine, a, owner):
    by_owner = (
        select(items.c.owner, items.c.k, items.c.val)
        .where(items.c.owner == bindparam("o"))
        .order_by(items.c.k)
    )
    bump = (
        update(counters)
        .where(counters.c.owner == bindparam("o"))
        .values(n=counters.c.n + 1)
        .returning(counters.c.n)
    )
    for r in range(a.rounds):
        with engine.connect() as conn:
            rows = conn.execute(by_owner, {"o": owner}).all()
            check_items(owner, rows, "sqlalchemy core round %d" % r)
            v = conn.execute(
                text("SELECT CAST(:a AS int) * 1000 + CAST(:b AS int)"),
                {"a": owner, "b": r},
            ).scalar_one()
            check(v == owner * 1000 + r, "client %d round %d: sum %r" % (owner, r, v))
            conn.rollback()
        with engine.begin() as conn:
            n = conn.execute(bump, {"o": owner}).scalar_one()
            check(n == r + 1, "client %d round %d: counter %r" % (owner, r, n))
            rows = conn.execute(by_owner, {"o": owner}).all()
            check_items(owner, rows, "sqlalchemy in tx round %d" % r)
            vals = conn.execute(
                text("SELECT val FROM items WHERE owner = :o AND k = ANY(:ks) ORDER BY k"),
                {"o": owner, "ks": [0, 2]},
            ).scalars().all()
            check(
                vals == ["o%dk0" % owner, "o%dk2" % owner],
                "client %d round %d: vals %r" % (owner, r, vals),
            )
    with engine.connect() as conn:
        n = conn.execute(
            select(counters.c.n).where(counters.c.owner == owner)
        ).scalar_one()
        check(n == a.rounds, "client %d: final counter %r" % (owner, n))


def main():
    a = args()
    url = "postgresql+psycopg://%s@%s:%d/%s" % (a.user, a.host, a.port, a.db)
    engine = create_engine(
        url,
        pool_size=a.clients,
        max_overflow=0,
        pool_timeout=60,
        connect_args={"prepare_threshold": 0, "connect_timeout": 30},
    )
    results = [None] * a.clients

    def run(owner):
        try:
            client(engine, a, owner)
        except Exception:
            results[owner] = "client %d:\n%s" % (owner, describe_exc())

    threads = [threading.Thread(target=run, args=(i,)) for i in range(a.clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    engine.dispose()
    finish(results, a.clients)


main()
