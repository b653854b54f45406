//! SHOW DATABASES, USERS, LISTS and MEM: the configured and live objects (databases,
//! users, pools, connections) and their counts.

use std::collections::BTreeSet;
use std::sync::atomic::Ordering;

use super::{cols, console_sessions, num, opt, rows, txt, Ctx, ADMIN_DB};
use crate::admin::Reply;

/// Database names SHOW DATABASES lists: configured entries (not the `*` fallback), the
/// ones created through `*` that have pools, and the admin database; sorted, as
/// PgBouncer keeps its database list.
fn database_names(c: &Ctx) -> BTreeSet<String> {
    let mut names: BTreeSet<String> = c
        .cfg
        .databases
        .keys()
        .filter(|n| n.as_str() != "*")
        .cloned()
        .collect();
    // Databases known from use: pools, or named by a console command (PAUSE x).
    let used = c.app.registry.databases().into_iter().map(|(n, _)| n);
    let pooled = c.app.registry.all().into_iter().map(|p| p.db_name.clone());
    for n in used.chain(pooled) {
        if c.cfg.database(&n).is_some() {
            names.insert(n);
        }
    }
    names.insert(ADMIN_DB.to_string());
    names
}

pub fn databases(c: &Ctx) -> Reply {
    let g = &c.cfg.general;
    let mut out = Vec::new();
    for name in database_names(c) {
        if name == ADMIN_DB {
            // PgBouncer's fake admin database: pool_size 2, statement mode, forced user
            // `pgbouncer`, its port the listen port.
            out.push(vec![
                txt(ADMIN_DB),
                None,
                num(g.listen_port),
                txt(ADMIN_DB),
                txt(ADMIN_DB),
                num(2),
                num(g.min_pool_size),
                num(g.reserve_pool_size),
                num(g.server_lifetime.as_secs()),
                txt("statement"),
                None,
                num(g.max_db_connections),
                num(0),
                num(g.max_db_client_connections),
                num(console_sessions(c.app)),
                num(0),
                num(0),
            ]);
            continue;
        }
        let Some(db) = c.cfg.database(&name) else {
            continue;
        };
        let shared = c.app.registry.db_shared_if_exists(&name);
        let count = |f: fn(&crate::pool::Shared) -> u32| shared.as_deref().map(f).unwrap_or(0);
        let lb = db
            .host
            .as_deref()
            .filter(|h| h.contains(','))
            .map(|_| db.load_balance_hosts.unwrap_or_default().as_str());
        out.push(vec![
            txt(&db.name),
            opt(db.host.clone()),
            num(db.port),
            txt(db.dbname.clone().unwrap_or_else(|| db.name.clone())),
            opt(db.user.clone()),
            num(db.pool_size.unwrap_or(g.default_pool_size)),
            num(db.min_pool_size.unwrap_or(g.min_pool_size)),
            num(db.reserve_pool_size.unwrap_or(g.reserve_pool_size)),
            num(db.server_lifetime.unwrap_or(g.server_lifetime).as_secs()),
            opt(db.pool_mode.map(|m| m.as_str())),
            opt(lb),
            num(db.max_db_connections.unwrap_or(g.max_db_connections)),
            num(count(|s| s.servers.get())),
            num(db
                .max_db_client_connections
                .unwrap_or(g.max_db_client_connections)),
            num(count(|s| s.clients.get())),
            num(count(|s| s.gate.is_paused() as u32)),
            num(count(|s| s.disabled.load(Ordering::Acquire) as u32)),
        ]);
    }
    rows(
        cols(
            "ssissiiiissiiiiii",
            &[
                "name",
                "host",
                "port",
                "database",
                "force_user",
                "pool_size",
                "min_pool_size",
                "reserve_pool_size",
                "server_lifetime",
                "pool_mode",
                "load_balance_hosts",
                "max_connections",
                "current_connections",
                "max_client_connections",
                "current_client_connections",
                "paused",
                "disabled",
            ],
        ),
        out,
    )
}

/// Users SHOW USERS lists: the auth file, `[users]`, forced users, users with pools, and
/// `pgbouncer` (PgBouncer adds it at startup); sorted.
fn user_names(c: &Ctx) -> BTreeSet<String> {
    let mut names: BTreeSet<String> = c.app.userlist.load().users.keys().cloned().collect();
    names.extend(c.cfg.users.keys().cloned());
    names.extend(c.cfg.databases.values().filter_map(|d| d.user.clone()));
    names.extend(c.app.registry.all().iter().map(|p| p.user_name.clone()));
    names.insert(ADMIN_DB.to_string());
    names
}

pub fn users(c: &Ctx) -> Reply {
    let g = &c.cfg.general;
    let pools = c.app.registry.all();
    let mut out = Vec::new();
    for name in user_names(c) {
        let u = c.cfg.users.get(&name);
        // PgBouncer prints these two with "%9d" when set and "" when not.
        let padded = |v: Option<u32>| txt(v.map(|n| format!("{n:9}")).unwrap_or_default());
        let shared = pools.iter().find(|p| p.user_name == name).map(|p| &p.user);
        out.push(vec![
            txt(&name),
            padded(u.and_then(|u| u.pool_size)),
            padded(u.and_then(|u| u.reserve_pool_size)),
            opt(u.and_then(|u| u.pool_mode).map(|m| m.as_str())),
            num(u
                .and_then(|u| u.max_user_connections)
                .unwrap_or(g.max_user_connections)),
            num(shared.map(|s| s.servers.get()).unwrap_or(0)),
            num(u
                .and_then(|u| u.max_user_client_connections)
                .unwrap_or(g.max_user_client_connections)),
            num(shared.map(|s| s.clients.get()).unwrap_or(0)),
        ]);
    }
    rows(
        cols(
            "ssssiiii",
            &[
                "name",
                "pool_size",
                "reserve_pool_size",
                "pool_mode",
                "max_user_connections",
                "current_connections",
                "max_user_client_connections",
                "current_client_connections",
            ],
        ),
        out,
    )
}

pub fn lists(c: &Ctx) -> Reply {
    let pools = c.app.registry.all();
    let used_clients = c.app.client_records.len();
    let live = c.app.live_clients.load(Ordering::Acquire) as usize;
    let used_servers: u64 = pools.iter().map(|p| u64::from(p.counts().total)).sum();
    let items: [(&str, u64); 14] = [
        ("databases", database_names(c).len() as u64),
        ("users", user_names(c).len() as u64),
        ("peers", c.cfg.peers.len() as u64),
        // + the admin pool.
        ("pools", pools.len() as u64 + 1),
        ("peer_pools", 0),
        // pgsluice has no slab of free objects to report.
        ("free_clients", 0),
        ("used_clients", used_clients as u64),
        // Client tasks that are not logged in yet (or are serving a cancel request).
        ("login_clients", live.saturating_sub(used_clients) as u64),
        ("free_servers", 0),
        ("used_servers", used_servers),
        // No asynchronous DNS cache: names are resolved at connect time.
        ("dns_names", 0),
        ("dns_zones", 0),
        ("dns_queries", 0),
        ("dns_pending", 0),
    ];
    rows(
        cols("si", &["list", "items"]),
        items.iter().map(|(n, v)| vec![txt(*n), num(v)]).collect(),
    )
}

/// PgBouncer reports its slab caches. pgsluice has none; it reports its per-connection
/// records the same way: record size, records in use, none free, their total bytes.
pub fn mem(c: &Ctx) -> Reply {
    let pools = c.app.registry.all();
    let servers: usize = pools.iter().map(|p| p.servers().len()).sum();
    let entries = [
        (
            "client_cache",
            std::mem::size_of::<crate::stats::ClientInfo>(),
            c.app.client_records.len(),
        ),
        (
            "server_cache",
            std::mem::size_of::<crate::stats::ServerInfo>(),
            servers,
        ),
        (
            "pool_cache",
            std::mem::size_of::<crate::pool::Pool>(),
            pools.len(),
        ),
        (
            "db_cache",
            std::mem::size_of::<crate::config::Database>(),
            database_names(c).len(),
        ),
        (
            "user_cache",
            std::mem::size_of::<crate::config::UserSettings>(),
            user_names(c).len(),
        ),
    ];
    let out = entries
        .iter()
        .map(|(n, size, used)| {
            vec![
                txt(*n),
                num(size),
                num(used),
                num(0),
                num(size.saturating_mul(*used)),
            ]
        })
        .collect();
    rows(
        cols("siiii", &["name", "size", "used", "free", "memtotal"]),
        out,
    )
}
