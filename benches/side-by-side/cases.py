"""The cases of the side-by-side bench (issue 7), in the order they run."""

class Case:
    """One pgbench invocation, run against every target (or only the poolers)."""

    def __init__(self, key, title, clients, args, poolers_only=False, latency=False, balance=False,
                 group="select", tls=None, optional=False, floor=False):
        self.key = key
        self.title = title
        self.clients = clients
        self.args = args
        self.poolers_only = poolers_only
        self.latency = latency
        self.balance = balance
        self.group = group
        # None, "client" (clients → pooler over TLS) or "both" (pooler → PostgreSQL too).
        # TLS cases run against a second pair of poolers with the same TLS settings.
        self.tls = tls
        # Optional cases run only when named in --cases.
        self.optional = optional
        # Also run against the 1:1 relay (the floor target): only cases without TLS or -C
        # whose clients, one PostgreSQL backend each, fit max_connections with room.
        self.floor = floor


CASES = [
    Case("select-c20", "-S, 20 clients", 20, ["-S"], floor=True),
    Case("select-c200", "-S, 200 clients", 200, ["-S"], poolers_only=True),
    Case("select-c1000", "-S, 1,000 clients", 1000, ["-S"], poolers_only=True, latency=True),
    Case("select-c1", "-S, 1 client", 1, ["-S"], latency=True, floor=True),
    Case("connect-c8", "-S -C, 8 clients", 8, ["-S", "-C"], group="connect"),
    Case("simple-c50", "-S -M simple, 50 clients", 50, ["-S", "-M", "simple"], group="protocol", floor=True),
    Case("extended-c50", "-S -M extended, 50 clients", 50, ["-S", "-M", "extended"], group="protocol", floor=True),
    Case("prepared-c50", "-S -M prepared, 50 clients", 50, ["-S", "-M", "prepared"], group="protocol", floor=True),
    Case("tpcb-c100", "TPC-B, 100 clients", 100, [], balance=True, group="tpcb"),
    Case("tls-client-c50", "-S, 50 clients, TLS clients → pooler", 50, ["-S"], poolers_only=True,
         group="tls", tls="client", optional=True),
    Case("tls-both-c50", "-S, 50 clients, TLS on both sides", 50, ["-S"], poolers_only=True,
         group="tls", tls="both", optional=True),
    Case("tls-connect-c8", "-S -C, 8 clients, TLS clients → pooler", 8, ["-S", "-C"],
         poolers_only=True, group="tls", tls="client", optional=True),
]

CASE_BY_KEY = {c.key: c for c in CASES}
