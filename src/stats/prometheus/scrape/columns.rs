//! Which SHOW column, LISTS row or CONFIG key feeds which pgbouncer_exporter family, under
//! the exporter's names and with its help texts.

use super::{counter, gauge, Column};

pub(super) const DATABASES: &[Column] = &[
    gauge(
        &["pool_size"],
        "pool_size",
        "Maximum number of server connections",
    ),
    // `reserve_pool` until PgBouncer 1.24, `reserve_pool_size` since.
    gauge(
        &["reserve_pool_size", "reserve_pool"],
        "reserve_pool",
        "Maximum number of additional connections for this database",
    ),
    gauge(
        &["max_connections"],
        "max_connections",
        "Maximum number of allowed connections for this database",
    ),
    gauge(
        &["current_connections"],
        "current_connections",
        "Current number of connections for this database",
    ),
    gauge(
        &["paused"],
        "paused",
        "1 if this database is currently paused, else 0",
    ),
    gauge(
        &["disabled"],
        "disabled",
        "1 if this database is currently disabled, else 0",
    ),
];

/// STATS_TOTALS columns; the bool marks the families exporter ≤ 0.10 also had (as
/// `pgbouncer_stats_*`, read from SHOW STATS' `total_*` columns, the same numbers).
pub(super) const STATS: &[(Column, bool)] = &[
    (
        counter(
            &["query_count"],
            "queries_pooled_total",
            "Total number of SQL queries pooled",
            1.0,
        ),
        true,
    ),
    (
        counter(
            &["query_time"],
            "queries_duration_seconds_total",
            "Total number of seconds spent by pgbouncer when actively connected to PostgreSQL, executing queries",
            1e-6,
        ),
        true,
    ),
    (
        counter(
            &["bytes_received"],
            "received_bytes_total",
            "Total volume in bytes of network traffic received by pgbouncer, shown as bytes",
            1.0,
        ),
        true,
    ),
    (
        counter(
            &["bytes_sent"],
            "sent_bytes_total",
            "Total volume in bytes of network traffic sent by pgbouncer, shown as bytes",
            1.0,
        ),
        true,
    ),
    (
        counter(
            &["wait_time"],
            "client_wait_seconds_total",
            "Time spent by clients waiting for a server in seconds",
            1e-6,
        ),
        true,
    ),
    (
        counter(
            &["xact_count"],
            "sql_transactions_pooled_total",
            "Total number of SQL transactions pooled",
            1.0,
        ),
        true,
    ),
    (
        counter(
            &["xact_time"],
            "server_in_transaction_seconds_total",
            "Total number of seconds spent by pgbouncer when connected to PostgreSQL in a transaction, either idle in transaction or executing queries",
            1e-6,
        ),
        true,
    ),
    (
        counter(
            &["server_assignment_count"],
            "server_assignments_total",
            "Total number of times a server was assigned to a client",
            1.0,
        ),
        false,
    ),
    (
        counter(
            &["client_parse_count"],
            "client_parses_total",
            "Total number of prepared statement Parse messages received from clients",
            1.0,
        ),
        false,
    ),
    (
        counter(
            &["server_parse_count"],
            "server_parses_total",
            "Total number of prepared statement Parse messages sent by pgbouncer to PostgreSQL",
            1.0,
        ),
        false,
    ),
    (
        counter(
            &["bind_count"],
            "binds_total",
            "Total number of prepared statements readied for execution with a Bind message",
            1.0,
        ),
        false,
    ),
];

pub(super) const POOLS: &[Column] = &[
    gauge(
        &["cl_active"],
        "client_active_connections",
        "Client connections linked to server connection and able to process queries, shown as connection",
    ),
    gauge(
        &["cl_active_cancel_req"],
        "client_active_cancel_connections",
        "Client connections that have forwarded query cancellations to the server and are waiting for the server response",
    ),
    gauge(
        &["cl_waiting"],
        "client_waiting_connections",
        "Client connections waiting on a server connection, shown as connection",
    ),
    gauge(
        &["cl_waiting_cancel_req"],
        "client_waiting_cancel_connections",
        "Client connections that have not forwarded query cancellations to the server yet",
    ),
    gauge(
        &["sv_active"],
        "server_active_connections",
        "Server connections linked to a client connection, shown as connection",
    ),
    gauge(
        &["sv_active_cancel"],
        "server_active_cancel_connections",
        "Server connections that are currently forwarding a cancel request.",
    ),
    gauge(
        &["sv_being_canceled"],
        "server_being_canceled_connections",
        "Servers that normally could become idle but are waiting to do so until all in-flight cancel requests have completed that were sent to cancel a query on this server.",
    ),
    gauge(
        &["sv_idle"],
        "server_idle_connections",
        "Server connections idle and ready for a client query, shown as connection",
    ),
    gauge(
        &["sv_used"],
        "server_used_connections",
        "Server connections idle more than server_check_delay, needing server_check_query, shown as connection",
    ),
    gauge(
        &["sv_tested"],
        "server_testing_connections",
        "Server connections currently running either server_reset_query or server_check_query, shown as connection",
    ),
    gauge(
        &["sv_login"],
        "server_login_connections",
        "Server connections currently in the process of logging in, shown as connection",
    ),
    // Whole seconds, as the exporter passes SHOW POOLS' `maxwait` on; the fraction is in
    // pgsluice_pool_client_maxwait_seconds.
    gauge(
        &["maxwait"],
        "client_maxwait_seconds",
        "Age of oldest unserved client connection, shown as second",
    ),
];

/// SHOW LISTS rows the exporter maps, to its metric names and help texts.
pub(super) const LISTS: &[(&str, &str, &str)] = &[
    ("databases", "pgbouncer_databases", "Count of databases"),
    ("users", "pgbouncer_users", "Count of users"),
    ("pools", "pgbouncer_pools", "Count of pools"),
    (
        "free_clients",
        "pgbouncer_free_clients",
        "Count of free clients",
    ),
    (
        "used_clients",
        "pgbouncer_used_clients",
        "Count of used clients",
    ),
    (
        "login_clients",
        "pgbouncer_login_clients",
        "Count of clients in login state",
    ),
    (
        "free_servers",
        "pgbouncer_free_servers",
        "Count of free servers",
    ),
    (
        "used_servers",
        "pgbouncer_used_servers",
        "Count of used servers",
    ),
    (
        "dns_names",
        "pgbouncer_cached_dns_names",
        "Count of DNS names in the cache",
    ),
    (
        "dns_zones",
        "pgbouncer_cached_dns_zones",
        "Count of DNS zones in the cache",
    ),
    (
        "dns_queries",
        "pgbouncer_in_flight_dns_queries",
        "Count of in-flight DNS queries",
    ),
];

/// SHOW CONFIG keys the exporter maps.
pub(super) const CONFIG: &[(&str, &str, &str)] = &[
    (
        "max_client_conn",
        "pgbouncer_config_max_client_connections",
        "Config maximum number of client connections",
    ),
    (
        "max_user_connections",
        "pgbouncer_config_max_user_connections",
        "Config maximum number of server connections per user",
    ),
];
