//! Finds the pool for (database, user), creating it on first use, and resolves each
//! pool's effective settings with PgBouncer's precedence: `[users]` over `[databases]`
//! over `[pgbouncer]`.

use std::sync::Arc;

use dashmap::DashMap;

use super::limits::Shared;
use super::pool::{Pool, PoolSettings};
use crate::config::{Config, Database, Secret, UserList};
use crate::net::tcp::TcpOptions;
use crate::net::tls::TlsContexts;
use crate::server::login::Host;
use crate::server::login::ServerTls;
use crate::server::{Credential, Target};

#[derive(Default)]
pub struct Registry {
    /// Process-wide PAUSE gate (PAUSE / SUSPEND without a database).
    pub global: Arc<super::Gate>,
    pools: DashMap<(String, String), Arc<Pool>>,
    dbs: DashMap<String, Arc<Shared>>,
    users: DashMap<String, Arc<Shared>>,
}

impl Registry {
    /// Limits shared by every pool of database `name` (client-side name).
    pub fn db_shared(&self, name: &str) -> Arc<Shared> {
        if let Some(s) = self.dbs.get(name) {
            return s.clone();
        }
        self.dbs.entry(name.to_string()).or_default().clone()
    }

    /// Limits shared by every pool of user `name`.
    pub fn user_shared(&self, name: &str) -> Arc<Shared> {
        if let Some(s) = self.users.get(name) {
            return s.clone();
        }
        self.users.entry(name.to_string()).or_default().clone()
    }

    /// The pool for client-side database `db` and pool user `user` (the forced user when
    /// the database entry has one).
    pub fn get_or_create(
        &self,
        cfg: &Config,
        tls: &TlsContexts,
        users: &UserList,
        db: &Database,
        user: &str,
    ) -> Arc<Pool> {
        let key = (db.name.clone(), user.to_string());
        if let Some(p) = self.pools.get(&key) {
            return p.clone();
        }
        self.pools
            .entry(key)
            .or_insert_with(|| {
                Pool::new(
                    db.name.clone(),
                    user.to_string(),
                    settings_for(cfg, db, user),
                    target_for(cfg, tls, db, user),
                    credential_for(db, users, user),
                    self.db_shared(&db.name),
                    self.user_shared(user),
                    self.global.clone(),
                )
            })
            .clone()
    }

    /// Takes one client slot of database `name` (within `max`, 0 = unlimited) and returns
    /// its shared state; `None` when the limit is reached. Retries if the janitor freed the
    /// entry between the lookup and the slot being taken, so a client never counts
    /// against an orphaned entry.
    pub fn db_client_acquire(&self, name: &str, max: u32) -> Option<Arc<Shared>> {
        loop {
            let s = self.db_shared(name);
            if !s.clients.try_acquire(max) {
                return None;
            }
            if self.dbs.get(name).is_some_and(|c| Arc::ptr_eq(&c, &s)) {
                return Some(s);
            }
            s.clients.release();
        }
    }

    /// The pool for (db, user) with one more client counted on it (see `get_or_create`).
    /// Retries if the janitor freed the pool between the lookup and the count.
    pub fn attach_client(
        &self,
        cfg: &Config,
        tls: &TlsContexts,
        users: &UserList,
        db: &Database,
        user: &str,
    ) -> Arc<Pool> {
        loop {
            let pool = self.get_or_create(cfg, tls, users, db, user);
            pool.clients.try_acquire(0);
            if self
                .pools
                .get(&(db.name.clone(), user.to_string()))
                .is_some_and(|c| Arc::ptr_eq(&c, &pool))
            {
                return pool;
            }
            pool.clients.release();
        }
    }

    /// Frees `pool` if it is still registered and has no client, no waiter and no server
    /// (pool_idle_timeout, autodb_idle_timeout). Its statistics go with it. Checked under
    /// the map's lock, which `attach_client` also takes after counting its client, so a
    /// client that is attaching is never left on a freed pool.
    pub fn free_if_unused(&self, pool: &Arc<Pool>) -> bool {
        let key = (pool.db_name.clone(), pool.user_name.clone());
        self.pools
            .remove_if(&key, |_, v| {
                Arc::ptr_eq(v, pool) && pool.clients.get() == 0 && pool.counts().is_empty()
            })
            .is_some()
    }

    /// Frees the shared state of database `name` (an auto-database past
    /// autodb_idle_timeout) once no pool of it is left and nothing counts on it; it then
    /// vanishes from SHOW DATABASES. A paused or disabled database keeps its state.
    pub fn free_database_if_unused(&self, name: &str) -> bool {
        if self.pools.iter().any(|e| e.key().0 == name) {
            return false;
        }
        self.dbs
            .remove_if(name, |_, s| {
                s.clients.get() == 0
                    && s.servers.get() == 0
                    && !s.disabled.load(std::sync::atomic::Ordering::Acquire)
                    && !s.gate.is_paused()
            })
            .is_some()
    }

    pub fn get(&self, db: &str, user: &str) -> Option<Arc<Pool>> {
        self.pools
            .get(&(db.to_string(), user.to_string()))
            .map(|p| p.clone())
    }

    /// Pools of database `db` (client-side name), or all pools.
    pub fn pools_of(&self, db: Option<&str>) -> Vec<Arc<Pool>> {
        self.pools
            .iter()
            .filter(|e| db.is_none_or(|d| e.key().0 == d))
            .map(|e| e.value().clone())
            .collect()
    }

    /// The shared state of database `name`, if any pool or client has used it.
    pub fn db_shared_if_exists(&self, name: &str) -> Option<Arc<Shared>> {
        self.dbs.get(name).map(|s| s.clone())
    }

    /// Every database that has shared state (used by a client, or named by a console
    /// command), with that state: for SUSPEND's paused-database check and KILL.
    pub fn databases(&self) -> Vec<(String, Arc<Shared>)> {
        self.dbs
            .iter()
            .map(|e| (e.key().clone(), e.value().clone()))
            .collect()
    }

    pub fn all(&self) -> Vec<Arc<Pool>> {
        self.pools.iter().map(|e| e.value().clone()).collect()
    }

    /// RELOAD: every pool takes its new settings; pools whose database entry vanished keep
    /// running with their old settings until their clients leave.
    pub fn reconfigure_all(&self, cfg: &Config, tls: &TlsContexts, users: &UserList) {
        for p in self.all() {
            if let Some(db) = cfg.database(&p.db_name) {
                p.reconfigure(
                    settings_for(cfg, &db, &p.user_name),
                    target_for(cfg, tls, &db, &p.user_name),
                    match credential_for(&db, users, &p.user_name) {
                        Credential::None => None,
                        c => Some(c),
                    },
                );
            }
        }
    }
}

/// Effective settings of the (db, user) pool.
pub fn settings_for(cfg: &Config, db: &Database, user: &str) -> PoolSettings {
    let g = &cfg.general;
    let u = cfg.users.get(user);
    PoolSettings {
        mode: u
            .and_then(|u| u.pool_mode)
            .or(db.pool_mode)
            .unwrap_or(g.pool_mode),
        pool_size: u
            .and_then(|u| u.pool_size)
            .or(db.pool_size)
            .unwrap_or(g.default_pool_size),
        min_pool_size: db.min_pool_size.unwrap_or(g.min_pool_size),
        reserve_pool_size: u
            .and_then(|u| u.reserve_pool_size)
            .or(db.reserve_pool_size)
            .unwrap_or(g.reserve_pool_size),
        reserve_pool_timeout: g.reserve_pool_timeout,
        max_db_connections: db.max_db_connections.unwrap_or(g.max_db_connections),
        max_user_connections: u
            .and_then(|u| u.max_user_connections)
            .unwrap_or(g.max_user_connections),
        query_wait_timeout: u
            .and_then(|u| u.query_wait_timeout)
            .or(db.query_wait_timeout)
            .unwrap_or(g.query_wait_timeout),
        query_wait_notify: g.query_wait_notify,
        // PgBouncer has these per user but not per database; a user's 0 is "not set".
        query_timeout: u.and_then(|u| u.query_timeout).unwrap_or(g.query_timeout),
        idle_transaction_timeout: u
            .and_then(|u| u.idle_transaction_timeout)
            .unwrap_or(g.idle_transaction_timeout),
        transaction_timeout: u
            .and_then(|u| u.transaction_timeout)
            .unwrap_or(g.transaction_timeout),
        client_idle_timeout: u
            .and_then(|u| u.client_idle_timeout)
            .unwrap_or(g.client_idle_timeout),
        server_lifetime: db.server_lifetime.unwrap_or(g.server_lifetime),
        server_idle_timeout: g.server_idle_timeout,
        server_login_retry: g.server_login_retry,
        server_round_robin: g.server_round_robin,
        server_reset_query: g.server_reset_query.clone(),
        server_reset_query_always: g.server_reset_query_always,
        max_packet_size: g.max_packet_size,
        max_prepared_statements: g.max_prepared_statements,
        forced_user: db.user.is_some(),
    }
}

/// Where and how the pool's servers connect.
pub fn target_for(cfg: &Config, tls: &TlsContexts, db: &Database, user: &str) -> Target {
    let g = &cfg.general;
    let mut startup = Vec::new();
    for (k, v) in [
        ("client_encoding", &db.client_encoding),
        ("datestyle", &db.datestyle),
        ("timezone", &db.timezone),
        ("application_name", &db.application_name),
    ] {
        if let Some(v) = v {
            startup.push((k.to_string(), v.clone()));
        }
    }
    Target {
        hosts: Host::parse_list(db.host.as_deref(), &g.unix_socket_dir),
        port: if db.port == 0 { 5432 } else { db.port },
        dbname: db.dbname.clone().unwrap_or_else(|| db.name.clone()),
        user: user.to_string(),
        startup,
        connect_query: db.connect_query.clone(),
        connect_timeout: g.server_connect_timeout,
        tcp: TcpOptions::from_general(g),
        max_packet_size: g.max_packet_size,
        load_balance: db.load_balance_hosts.unwrap_or_default(),
        dns_max_ttl: g.dns_max_ttl,
        dns_nxdomain_ttl: g.dns_nxdomain_ttl,
        login_retry: g.server_login_retry,
        check_query: Target::check_query_from(&g.server_check_query),
        check_delay: g.server_check_delay,
        fast_close: g.server_fast_close,
        tls: ServerTls::new(db.sslmode.unwrap_or(g.server_tls_sslmode), &tls.server),
    }
}

/// The password used to log into the server: the database entry's `password=` for its
/// forced user, else the user's auth_file secret.
pub fn credential_for(db: &Database, users: &UserList, user: &str) -> Credential {
    if db.user.as_deref() == Some(user) {
        if let Some(p) = &db.password {
            return Credential::Secret(
                Secret::parse(p).unwrap_or_else(|_| Secret::Plain(p.clone())),
            );
        }
    }
    match users.users.get(user) {
        // A SCRAM secret can only be used with keys from a client's SCRAM login.
        Some(Secret::Scram(_)) | None => Credential::None,
        Some(s) => Credential::Secret(s.clone()),
    }
}
