//! Process-wide state: the live configuration and auth file (swapped whole on reload), the
//! pool registry, the cancel-key registry, client counts, and the shutdown state.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU8, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;
use tokio::sync::watch;

use crate::config::{Config, UserList};
use crate::net::tls::TlsContexts;
use crate::pool::{Counter, Registry};
use crate::session::cancel::CancelRegistry;

/// SHUTDOWN in progress; ordered so a stronger mode wins.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u8)]
pub enum ShutdownMode {
    None = 0,
    /// SHUTDOWN WAIT_FOR_CLIENTS / SIGTERM: exit when the last client has left.
    WaitForClients = 1,
    /// SHUTDOWN WAIT_FOR_SERVERS / SIGINT: exit when every server is released and closed.
    WaitForServers = 2,
}

pub struct App {
    pub config: ArcSwap<Config>,
    /// TLS configurations built from `config` (files read at startup and on each reload).
    pub tls: ArcSwap<TlsContexts>,
    pub userlist: ArcSwap<UserList>,
    pub registry: Registry,
    /// Logged-in clients by id, for SHOW CLIENTS / KILL_CLIENT.
    pub client_records: crate::ids::IdMap<u64, Arc<crate::stats::ClientInfo>>,
    pub cancels: Arc<CancelRegistry>,
    /// Logged-in (or logging-in) clients, for max_client_conn; the admin console is exempt.
    pub clients: Counter,
    /// Client tasks alive, for shutdown.
    pub live_clients: AtomicU32,
    pub shutting_down: AtomicBool,
    /// Which SHUTDOWN is in progress (a [`ShutdownMode`] as u8).
    shutdown_mode: AtomicU8,
    /// Wakes the serving loop when a shutdown begins, whether from a signal or from the
    /// console, so both stop accepting and exit on the same condition.
    pub shutdown_begun: tokio::sync::Notify,
    shutdown_tx: watch::Sender<bool>,
    /// Asks the serving loop to exit now (SHUTDOWN, SIGQUIT).
    pub exit: tokio::sync::Notify,
}

impl App {
    /// An App whose TLS settings are the defaults (no files): for tests of other parts.
    pub fn new(config: Config, userlist: UserList) -> Arc<App> {
        App::with_tls(config, userlist, TlsContexts::plain())
    }

    /// `tls` must have been built from `config` ([`TlsContexts::build`]).
    pub fn with_tls(config: Config, userlist: UserList, tls: TlsContexts) -> Arc<App> {
        let (shutdown_tx, _) = watch::channel(false);
        Arc::new(App {
            config: ArcSwap::from_pointee(config),
            tls: ArcSwap::from_pointee(tls),
            userlist: ArcSwap::from_pointee(userlist),
            registry: Registry::default(),
            client_records: Default::default(),
            cancels: Arc::new(CancelRegistry::default()),
            clients: Counter::default(),
            live_clients: AtomicU32::new(0),
            shutting_down: AtomicBool::new(false),
            shutdown_mode: AtomicU8::new(ShutdownMode::None as u8),
            shutdown_begun: tokio::sync::Notify::new(),
            shutdown_tx,
            exit: tokio::sync::Notify::new(),
        })
    }

    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::Acquire)
    }

    /// Stop accepting new clients. `kick_idle`: also disconnect clients that hold no server
    /// and pause, so released servers close (SHUTDOWN WAIT_FOR_SERVERS, SIGINT); otherwise
    /// existing clients finish on their own (SHUTDOWN WAIT_FOR_CLIENTS, SIGTERM).
    /// A WAIT_FOR_CLIENTS shutdown can be escalated to WAIT_FOR_SERVERS, never back.
    pub fn begin_shutdown(&self, kick_idle: bool) {
        self.shutting_down.store(true, Ordering::Release);
        let mode = if kick_idle {
            ShutdownMode::WaitForServers
        } else {
            ShutdownMode::WaitForClients
        };
        self.shutdown_mode.fetch_max(mode as u8, Ordering::AcqRel);
        if kick_idle {
            // PgBouncer sets PAUSE here: no server is handed out any more.
            self.registry.global.pause();
            for p in self.registry.all() {
                p.close_idle();
            }
            let _ = self.shutdown_tx.send(true);
        }
        self.shutdown_begun.notify_one();
    }

    pub fn shutdown_mode(&self) -> ShutdownMode {
        match self.shutdown_mode.load(Ordering::Acquire) {
            1 => ShutdownMode::WaitForClients,
            2 => ShutdownMode::WaitForServers,
            _ => ShutdownMode::None,
        }
    }

    /// Immediate exit (SHUTDOWN).
    pub fn request_exit(&self) {
        self.exit.notify_one();
    }

    pub fn shutdown_signal(&self) -> watch::Receiver<bool> {
        self.shutdown_tx.subscribe()
    }

    /// Loads the auth file named by the configuration (empty list when none).
    pub fn load_userlist(config: &Config) -> Result<UserList, crate::config::ConfigError> {
        match &config.general.auth_file {
            Some(p) => UserList::load(p),
            None => Ok(UserList::default()),
        }
    }

    /// The text PgBouncer's console sends (as a NOTICE) when a RELOAD could not apply the
    /// TLS settings.
    pub const TLS_NOT_APPLIED: &'static str =
        "TLS settings could not be applied, still using old configuration";

    /// RELOAD / SIGHUP: re-read config and auth file; keep the old ones on any error.
    /// Certificate and key files are read again (rotation). If they do not load, the rest
    /// of the configuration still applies and the TLS configuration in use stays, as in
    /// PgBouncer: `Ok(false)` then (the console adds [`App::TLS_NOT_APPLIED`]).
    pub fn reload(&self) -> Result<bool, crate::config::ConfigError> {
        let old = self.config.load_full();
        let Some(path) = old.conffile.clone() else {
            return Err(crate::config::ConfigError::Msg(
                "no config file to reload".into(),
            ));
        };
        let mut new = Config::load(&path)?;
        keep_no_reload(&old.general, &mut new.general);
        let users = App::load_userlist(&new)?;
        for w in &new.warnings {
            tracing::warn!("{w}");
        }
        let tls = match TlsContexts::build(&new.general) {
            Ok(t) => Some(t),
            Err(e) => {
                tracing::error!("{}: {e}", App::TLS_NOT_APPLIED);
                None
            }
        };
        let applied = tls.is_some();
        self.config.store(Arc::new(new));
        self.userlist.store(Arc::new(users));
        if let Some(t) = tls {
            self.tls.store(Arc::new(t));
        }
        let cfg = self.config.load_full();
        let ul = self.userlist.load_full();
        self.registry.reconfigure_all(&cfg, &self.tls.load(), &ul);
        Ok(applied)
    }
}

/// PgBouncer ignores `[pgbouncer]` keys marked CF_NO_RELOAD once it runs ("silently
/// ignored" on RELOAD): the new configuration keeps the values in effect, so SHOW CONFIG
/// keeps telling the truth about listeners, pidfile, worker threads and so on.
fn keep_no_reload(old: &crate::config::General, new: &mut crate::config::General) {
    use crate::config::{general, keys};
    for k in keys::KEYS.iter().filter(|k| !k.reloadable) {
        let value = general::show_value(old, k.name);
        // An unset NULL-default key (`user`, `service_name`) is unset in the new one too.
        let text = value.as_deref().unwrap_or("");
        if let Err(e) = general::apply_general(new, k.name, text) {
            tracing::warn!("RELOAD: cannot keep {}: {e}", k.name);
        }
        if value.is_none() {
            new.not_implemented.remove(k.name);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reload_keeps_no_reload_keys() {
        use crate::config::general::apply_general;
        let mut old = crate::config::General::default();
        apply_general(&mut old, "listen_port", "7000").unwrap();
        apply_general(&mut old, "default_pool_size", "5").unwrap();
        let mut new = crate::config::General::default();
        apply_general(&mut new, "listen_port", "7001").unwrap();
        apply_general(&mut new, "default_pool_size", "9").unwrap();
        apply_general(&mut new, "user", "nobody").unwrap();
        keep_no_reload(&old, &mut new);
        assert_eq!(new.listen_port, 7000);
        assert_eq!(new.default_pool_size, 9);
        assert_eq!(new.user, "");
        assert_eq!(new.not_implemented.get("user"), None);
    }
}
