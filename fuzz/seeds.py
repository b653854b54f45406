#!/usr/bin/env python3
"""Writes the hand-made seed inputs (fuzz/corpus/<target>/seed-*) for the fuzz targets.

Realistic inputs: startup packets as psql, JDBC and libpq send them, client/server message
exchanges as PostgreSQL runs them, the example configs in conf/, RFC 7677's SCRAM
exchange. The fuzzer-found files next to them (hash names) come from `cargo fuzz run` +
`cargo fuzz cmin`; see docs/fuzzing.md. Run from anywhere: python3 fuzz/seeds.py
"""

import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
CORPUS = os.path.join(HERE, "corpus")


def write(target, name, data):
    d = os.path.join(CORPUS, target)
    os.makedirs(d, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    with open(os.path.join(d, "seed-" + name), "wb") as f:
        f.write(data)


def conf(name):
    with open(os.path.join(ROOT, "conf", name), "rb") as f:
        return f.read()


def cstr(s):
    return s.encode() + b"\0"


# --------------------------------------------------------------------------- startup
def startup_packet(params, code=196608):
    body = struct.pack(">I", code) + b"".join(cstr(k) + cstr(v) for k, v in params) + b"\0"
    return struct.pack(">I", len(body) + 4) + body


def special(code, rest=b""):
    return struct.pack(">II", 8 + len(rest), code) + rest


SSL, GSS, CANCEL = 80877103, 80877104, 80877102

psql = [("user", "app"), ("database", "appdb"), ("application_name", "psql"),
        ("client_encoding", "UTF8")]
jdbc = [("user", "app"), ("database", "appdb"), ("client_encoding", "UTF8"),
        ("DateStyle", "ISO"), ("TimeZone", "Europe/Paris"), ("extra_float_digits", "2"),
        ("options", "-c search_path=public")]
write("startup", "psql", startup_packet(psql))
write("startup", "jdbc", startup_packet(jdbc))
write("startup", "ssl-then-startup", special(SSL) + startup_packet(psql))
write("startup", "gss-ssl-startup", special(GSS) + special(SSL) + startup_packet(psql))
write("startup", "ssl-twice", special(SSL) + special(SSL))
write("startup", "cancel", special(CANCEL, struct.pack(">ii", 4242, -559038737)))
write("startup", "protocol-3.2", startup_packet(
    [("user", "app"), ("database", "appdb"), ("_pq_.command_compression", "on")],
    code=(3 << 16) | 2))
write("startup", "options-escapes", startup_packet(
    [("user", "app"), ("options", "-c geqo=off --search-path=a\\ b -cDateStyle=ISO")]))
write("startup", "quotes-in-values", startup_packet(
    [("user", "o'neil"), ("database", "db"), ("application_name", "it's \\ mine")]))
write("startup", "replication", startup_packet(
    [("user", "rep"), ("database", "replication"), ("replication", "database")]))
write("startup", "protocol-2", struct.pack(">II", 8 + 5, 0x00020000) + b"user\0")
write("startup", "too-long", struct.pack(">I", 10001) + b"\0\0\0\0")

# --------------------------------------------------------------------------- frames
def msg(tag, body=b""):
    return tag.encode() + struct.pack(">I", len(body) + 4) + body


def C(tag, body=b""):  # client frame for the frontend target
    return b"\0" + msg(tag, body)


def S(tag, body=b""):  # server frame for the frontend target
    return b"\1" + msg(tag, body)


def row_desc(*cols):
    b = struct.pack(">h", len(cols))
    for c in cols:
        b += cstr(c) + struct.pack(">ihihih", 0, 0, 23, 4, -1, 0)
    return b


def data_row(*vals):
    b = struct.pack(">h", len(vals))
    for v in vals:
        b += struct.pack(">i", len(v)) + v.encode()
    return b


def parse(name, sql):
    return cstr(name) + cstr(sql) + struct.pack(">h", 0)


def bind(portal, stmt, *params):
    b = cstr(portal) + cstr(stmt) + struct.pack(">h", 0) + struct.pack(">h", len(params))
    for p in params:
        b += struct.pack(">i", len(p)) + p.encode()
    return b + struct.pack(">h", 0)


def execute(portal="", rows=0):
    return cstr(portal) + struct.pack(">i", rows)


def err(sev, code, text):
    return b"S" + cstr(sev) + b"V" + cstr(sev) + b"C" + cstr(code) + b"M" + cstr(text) + \
        b"F" + cstr("postgres.c") + b"L" + cstr("1234") + b"R" + cstr("exec_simple_query") + b"\0"


Z = lambda s: S("Z", s.encode())

write("frontend", "simple-query",
      C("Q", cstr("SELECT 1")) + S("T", row_desc("?column?")) + S("D", data_row("1")) +
      S("C", cstr("SELECT 1")) + Z("I"))
write("frontend", "transaction",
      C("Q", cstr("BEGIN")) + S("C", cstr("BEGIN")) + Z("T") +
      C("Q", cstr("INSERT INTO t VALUES (1)")) + S("C", cstr("INSERT 0 1")) + Z("T") +
      C("Q", cstr("COMMIT")) + S("C", cstr("COMMIT")) + Z("I"))
write("frontend", "failed-transaction",
      C("Q", cstr("BEGIN; SELECT x")) + S("C", cstr("BEGIN")) +
      S("E", err("ERROR", "42703", 'column "x" does not exist')) + Z("E") +
      C("Q", cstr("ROLLBACK")) + S("C", cstr("ROLLBACK")) + Z("I"))
ext = C("P", parse("", "SELECT $1")) + C("B", bind("", "", "42")) + C("D", b"P\0") + \
    C("E", execute()) + C("S")
ext_reply = S("1") + S("2") + S("T", row_desc("?column?")) + S("D", data_row("42")) + \
    S("C", cstr("SELECT 1")) + Z("I")
write("frontend", "extended", ext + ext_reply)
write("frontend", "pipeline", ext + ext + ext + ext_reply + ext_reply + ext_reply)
write("frontend", "extended-flush",
      C("P", parse("s1", "SELECT 1")) + C("H") + S("1") + C("B", bind("", "s1")) +
      C("E", execute()) + C("H") + S("2") + S("D", data_row("1")) + S("C", cstr("SELECT 1")) +
      C("C", b"Ss1\0") + C("S") + S("3") + Z("I"))
write("frontend", "pipeline-error",
      ext + ext + S("E", err("ERROR", "22P02", "invalid input syntax")) + Z("I") + ext_reply)
write("frontend", "copy-in",
      C("Q", cstr("COPY t FROM STDIN")) + S("G", b"\0\0\1\0\0") + C("d", b"1\n") +
      C("d", b"2\n") + C("c") + S("C", cstr("COPY 2")) + Z("I"))
write("frontend", "copy-in-extended",
      C("P", parse("", "COPY t FROM STDIN")) + C("B", bind("", "")) + C("D", b"P\0") +
      C("E", execute()) + C("S") + S("1") + S("2") + S("n") + S("G", b"\0\0\1\0\0") +
      C("d", b"1\n") + C("c") + C("S") + S("C", cstr("COPY 1")) + Z("I"))
write("frontend", "copy-fail",
      C("Q", cstr("COPY t FROM STDIN")) + S("G", b"\0\0\1\0\0") + C("f", cstr("aborted")) +
      S("E", err("ERROR", "57014", "COPY from stdin failed: aborted")) + Z("I"))
write("frontend", "copy-out",
      C("Q", cstr("COPY t TO STDOUT")) + S("H", b"\0\0\1\0\0") + S("d", b"1\n") +
      S("d", b"2\n") + S("c") + S("C", cstr("COPY 2")) + Z("I"))
write("frontend", "copy-both",
      C("Q", cstr("START_REPLICATION SLOT s LOGICAL 0/0")) + S("W", b"\0\0\0") +
      S("d", b"w" + b"\0" * 24) + C("d", b"r" + b"\0" * 33) + C("c") + S("c") +
      S("C", cstr("COPY 0")) + Z("I"))
write("frontend", "function-call",
      C("F", struct.pack(">ihhih", 1598, 0, 1, 4, 0) + b"\0\0\0\1" + b"\0\0") +
      S("V", struct.pack(">i", 4) + b"\0\0\0\1") + Z("I"))
write("frontend", "notify-notice",
      C("Q", cstr("LISTEN c; NOTIFY c")) + S("C", cstr("LISTEN")) +
      S("N", err("NOTICE", "00000", "hello")) + S("C", cstr("NOTIFY")) +
      S("A", struct.pack(">i", 77) + cstr("c") + cstr("")) +
      S("S", cstr("TimeZone") + cstr("UTC")) + Z("I"))
write("frontend", "terminate", C("Q", cstr("SELECT 1")) + S("C", cstr("SELECT 1")) + Z("I") +
      C("X"))
write("frontend", "partial-frame", C("Q", cstr("SELECT 1")) + b"\1T\0\0\1\0\0\1")

# --------------------------------------------------------------------------- backend
auth = lambda code, rest=b"": msg("R", struct.pack(">i", code) + rest)
params = b"".join(msg("S", cstr(k) + cstr(v)) for k, v in [
    ("application_name", ""), ("client_encoding", "UTF8"), ("DateStyle", "ISO, MDY"),
    ("integer_datetimes", "on"), ("IntervalStyle", "postgres"), ("is_superuser", "off"),
    ("server_encoding", "UTF8"), ("server_version", "16.4"),
    ("standard_conforming_strings", "on"), ("TimeZone", "Etc/UTC")])
welcome = params + msg("K", struct.pack(">ii", 12345, 987654321)) + msg("Z", b"I")
write("backend", "login-trust", auth(0) + welcome)
write("backend", "login-md5", auth(5, b"\x01\x02\x03\x04"))
write("backend", "login-cleartext", auth(3))
write("backend", "login-scram",
      auth(10, cstr("SCRAM-SHA-256") + b"\0") +
      auth(11, b"r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,"
                b"s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096") +
      auth(12, b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=") + auth(0) + welcome)
write("backend", "login-starting-up",
      msg("E", err("FATAL", "57P03", "the database system is starting up")))
write("backend", "login-bad-password",
      msg("E", err("FATAL", "28P01", 'password authentication failed for user "app"')))
write("backend", "negotiate-version",
      msg("v", struct.pack(">ii", 0x00030000, 1) + cstr("_pq_.command_compression")) +
      auth(0) + welcome)
write("backend", "query-result",
      msg("T", row_desc("a", "b")) + msg("D", data_row("1", "x")) +
      msg("D", data_row("2", "y")) + msg("C", cstr("SELECT 2")) + msg("Z", b"I"))
write("backend", "error-with-position",
      msg("E", b"SERROR\0VERROR\0C42P01\0Mrelation \"nope\" does not exist\0P15\0"
               b"Fparse_relation.c\0L1392\0RparserOpenTable\0\0") + msg("Z", b"I"))
write("backend", "reset-query",
      msg("C", cstr("DISCARD ALL")) + msg("S", cstr("TimeZone") + cstr("Europe/Paris")) +
      msg("N", err("WARNING", "25P01", "there is no transaction in progress")) +
      msg("Z", b"I"))
write("backend", "truncated", msg("D", data_row("x" * 40))[:20])

# --------------------------------------------------------------------------- configs
write("config_ini", "pgsluice.ini", conf("pgsluice.ini"))
write("config_ini", "everything", """\
[databases]
appdb = host=127.0.0.1 port=5432 dbname=postgres user=app password=md50e9070b976a76706bb4bc4369e934be1 pool_size=10 min_pool_size=2 reserve_pool=3 max_db_connections=50 pool_mode=transaction connect_query='SELECT 1' client_encoding=UTF8 datestyle=ISO timezone=UTC application_name=x server_lifetime=3600 query_wait_timeout=0 load_balance_hosts=disable
"my db" = host=db1,db2 port=5433 auth_user=authu auth_dbname=postgres auth_query='SELECT usename, passwd FROM pg_shadow WHERE usename=$1'
"quo""ted" = host=/var/run/postgresql
scram = host=h password=SCRAM-SHA-256$4096:cGdzbHVpY2UtZXhhbXBsZQ==$EhV4zeMMAOPN0p/BEWku9/ki7Sixn6pXUjnaSYiKRCg=:ypZ7nkWQRdSAdSjDWmEEsmlBoLwrW5OeJRjLxYS5Euo=
* = host=127.0.0.1

[users]
app = pool_mode=session pool_size=5 reserve_pool_size=1 max_user_connections=10 max_user_client_connections=20 query_timeout=30 query_wait_timeout=-1 idle_transaction_timeout=60 transaction_timeout=0 client_idle_timeout=300

[peers]
1 = host=127.0.0.1 port=6432 pool_size=4
2 = host=/tmp

[pgbouncer]
listen_addr = 127.0.0.1 , ::1
listen_port = 6432
unix_socket_dir = /tmp
unix_socket_mode = 0777
auth_type = scram-sha-256
auth_file = conf/userlist.txt
admin_users = postgres, admin
stats_users = stats
pool_mode = statement
default_pool_size = 0x14
max_client_conn = 1000
max_packet_size = 2147483647
reserve_pool_timeout = 0.5
server_lifetime = 3600.25
server_reset_query = DISCARD ALL ; not a comment
ignore_startup_parameters = extra_float_digits, options
track_extra_parameters = IntervalStyle, search_path
log_connections = off
so_reuseport = yes
peer_id = 1
client_tls_sslmode = disable
prometheus_listen = 127.0.0.1:9127
worker_threads = 2
""")
write("config_ini", "include", """\
%include databases.ini
[pgbouncer]
listen_port = 7000
%include general.ini
""")
write("config_ini", "include-self", "[pgbouncer]\n%include self.ini\n")
write("config_ini", "errors", "[pgbouncer]\nlisten_port = 99999\n")
write("config_ini", "crlf-comments", "; c\r\n# c\r\n[pgbouncer]\r\n\t listen_port\t=  7000  \r\nauth_query =\r\n")
write("connstr", "full", "appdb\nhost=127.0.0.1 port=5432 dbname=postgres user=app pool_size=10 pool_mode=transaction connect_query='SELECT ''x'''")
write("connstr", "quoted", "db\nhost='C:\\' application_name='it''s' datestyle='ISO, MDY'")
write("connstr", "user", "app\npool_mode=session max_user_connections=10 query_timeout=1.5 query_wait_timeout=-1")
write("connstr", "peer", "7\nhost=10.0.0.7 port=6433 pool_size=2")
write("connstr", "scram-password", "db\npassword=SCRAM-SHA-256$4096:cGdzbHVpY2UtZXhhbXBsZQ==$EhV4zeMMAOPN0p/BEWku9/ki7Sixn6pXUjnaSYiKRCg=:ypZ7nkWQRdSAdSjDWmEEsmlBoLwrW5OeJRjLxYS5Euo=")
write("connstr", "blanks", "  host = h\tport=\t5432  ")
write("config_toml", "pgsluice.toml", conf("pgsluice.toml"))
write("config_toml", "tables", """\
[pgbouncer]
listen_addr = "*"
listen_port = 6432
reserve_pool_timeout = 0.5
log_connections = false
unix_socket_mode = "0700"
max_packet_size = 65536

[databases]
"*" = "host=127.0.0.1"
[databases.appdb]
host = "127.0.0.1"
port = 5432
pool_size = 10
pool_mode = "transaction"

[users]
app = "pool_mode=session"
[users.bob]
max_user_connections = 3

[peers]
1 = "host=127.0.0.1 port=6433"
[peers.2]
host = "/tmp"
""")

# --------------------------------------------------------------------------- userlist
write("userlist", "userlist.txt", conf("userlist.txt"))
write("userlist", "escapes", '"o""neil" "pa""ss" trailing junk\n; comment\n\n  "md5" "md5aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"\n"x" "md5AAAA"\n')
write("userlist", "scram-secret", "SCRAM-SHA-256$4096:W22ZaJ0SNY7soEsUEjb6gQ==$WG5d8oPm3OtcPnkdi4Uo7BkeZkBFzpcXkuLmtbsT4qY=:wfPLwcE6nTWhTAmQ7tl2KeoiWGPlZqQxSrmfPwDl2dU=")
write("userlist", "bad-scram", '"u" "SCRAM-SHA-256$0:c2FsdA==$a:b"\n')

# --------------------------------------------------------------------------- scram
rfc_client_first = b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO"
rfc_server_first = b"r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"
rfc_client_final = b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
rfc_server_final = b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="
write("scram", "server-rfc7677", b"\0" + rfc_client_first + b"\n" + rfc_client_final)
write("scram", "server-success", b"\0" + rfc_client_first + b"\nc=biws,r=@N,p=@P")
write("scram", "server-libpq", b"\0n,,n=,r=O5XnA6pfXr5nS3Xf7l0iZb1C\nc=biws,r=@N,p=@P")
write("scram", "server-y-flag", b"\0y,,n=,r=abc,x=ext\nc=eSws,r=@N,z=1,p=@P")
write("scram", "server-mock", b"\2n,,n=,r=abc\nc=biws,r=@N,p=@P")
write("scram", "server-channel-binding", b"\0p=tls-server-end-point,,n=,r=abc")
write("scram", "server-authzid", b"\0n,a=admin,n=,r=abc")
write("scram", "client-rfc7677", b"\1" + rfc_server_first + b"\n" + rfc_server_final)
write("scram", "client-success", b"\1r=@N%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096\nv=@V")
write("scram", "client-server-error", b"\1r=@Nxyz,s=c2FsdA==,i=1,ext=1\ne=invalid-proof")
write("scram", "client-too-many-iterations", b"\1r=@Nxyz,s=c2FsdA==,i=1000001")

# --------------------------------------------------------------------------- console
for name, q in [
    ("show-pools", "SHOW POOLS;"), ("show-help", "show help"), ("show-config", "SHOW CONFIG"),
    ("pause-db", "PAUSE appdb;"), ("resume", "  RESUME ; "), ("kill-quoted", 'KILL "my ""db"""'),
    ("set-eq", "SET default_pool_size = 10;"), ("set-to", "set server_reset_query TO 'DISCARD ''ALL'''"),
    ("set-word", 'SET "admin_users"=postgres'), ("reload", "RELOAD"), ("shutdown", "SHUTDOWN WAIT_FOR_CLIENTS"),
    ("two-commands", "SHOW POOLS; SHOW STATS"), ("tob", "SET a tob"), ("newlines", "\r\n\tSHOW\n\tSTATS\n"),
]:
    write("console", name, q)
