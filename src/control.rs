//! Process-wide state: the live configuration and auth file (swapped whole on reload), the
//! pool registry, the cancel-key registry, client counts, and the shutdown state.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;
use tokio::sync::watch;

use crate::config::{Config, UserList};
use crate::pool::{Counter, Registry};
use crate::session::cancel::CancelRegistry;

pub struct App {
    pub config: ArcSwap<Config>,
    pub userlist: ArcSwap<UserList>,
    pub registry: Registry,
    /// Logged-in clients by id, for SHOW CLIENTS / KILL_CLIENT.
    pub client_records: dashmap::DashMap<u64, Arc<crate::stats::ClientInfo>>,
    pub cancels: Arc<CancelRegistry>,
    /// Logged-in (or logging-in) clients, for max_client_conn; the admin console is exempt.
    pub clients: Counter,
    /// Client tasks alive, for shutdown.
    pub live_clients: AtomicU32,
    pub shutting_down: AtomicBool,
    shutdown_tx: watch::Sender<bool>,
    /// Asks the serving loop to exit now (SHUTDOWN, SIGQUIT).
    pub exit: tokio::sync::Notify,
}

impl App {
    pub fn new(config: Config, userlist: UserList) -> Arc<App> {
        let (shutdown_tx, _) = watch::channel(false);
        Arc::new(App {
            config: ArcSwap::from_pointee(config),
            userlist: ArcSwap::from_pointee(userlist),
            registry: Registry::default(),
            client_records: dashmap::DashMap::new(),
            cancels: Arc::new(CancelRegistry::default()),
            clients: Counter::default(),
            live_clients: AtomicU32::new(0),
            shutting_down: AtomicBool::new(false),
            shutdown_tx,
            exit: tokio::sync::Notify::new(),
        })
    }

    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::Acquire)
    }

    /// Stop accepting new clients. `kick_idle`: also disconnect clients that hold no server
    /// (SHUTDOWN WAIT_FOR_SERVERS); otherwise existing clients finish on their own
    /// (SHUTDOWN WAIT_FOR_CLIENTS).
    pub fn begin_shutdown(&self, kick_idle: bool) {
        self.shutting_down.store(true, Ordering::Release);
        if kick_idle {
            let _ = self.shutdown_tx.send(true);
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

    /// RELOAD / SIGHUP: re-read config and auth file; keep the old ones on any error.
    pub fn reload(&self) -> Result<(), crate::config::ConfigError> {
        let old = self.config.load_full();
        let Some(path) = old.conffile.clone() else {
            return Err(crate::config::ConfigError::Msg(
                "no config file to reload".into(),
            ));
        };
        let new = Config::load(&path)?;
        let users = App::load_userlist(&new)?;
        for w in &new.warnings {
            tracing::warn!("{w}");
        }
        self.config.store(Arc::new(new));
        self.userlist.store(Arc::new(users));
        let cfg = self.config.load_full();
        let ul = self.userlist.load_full();
        self.registry.reconfigure_all(&cfg, &ul);
        Ok(())
    }
}
