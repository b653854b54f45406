//! Cancel routing. Each client gets a random (pid, secret) issued by pgsluice. While a
//! client holds a server, its slot is armed with that server's real key; a CancelRequest
//! carrying the client's key is forwarded on a new connection to that server, opened the
//! way the server's own connection was (TLS as server_tls_sslmode says). A release
//! waits until cancels in flight have finished, so a cancel can never reach a server that
//! has moved on to another client.

use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::Notify;

use crate::server::ServerRoute;

/// A server's real cancel key, and how to reach it: its address and the TLS its
/// connection was opened with.
#[derive(Debug, Clone)]
pub struct ServerKey {
    pub route: Arc<ServerRoute>,
    pub pid: i32,
    pub secret: i32,
}

#[derive(Default)]
struct SlotState {
    target: Option<ServerKey>,
    inflight: u32,
}

pub struct CancelSlot {
    secret: i32,
    state: Mutex<SlotState>,
    done: Notify,
    /// Set for admin console sessions: a CancelRequest for the console is not forwarded
    /// anywhere; it wakes `console_cancel` instead (PgBouncer turns it into RESUME).
    console: std::sync::atomic::AtomicBool,
    pub console_cancel: Notify,
}

impl CancelSlot {
    /// Marks this key as an admin console session's.
    pub fn set_console(&self) {
        self.console
            .store(true, std::sync::atomic::Ordering::Release);
    }

    /// The client now runs requests on this server.
    pub fn arm(&self, key: ServerKey) {
        self.state.lock().target = Some(key);
    }

    /// The client is about to give its server back: no new cancel may target it, and any
    /// cancel already on its way must finish first. `false` = a cancel did not finish in
    /// time; the caller closes the server rather than reuse it.
    pub async fn disarm(&self) -> bool {
        {
            let mut st = self.state.lock();
            st.target = None;
            if st.inflight == 0 {
                return true;
            }
        }
        let wait = async {
            loop {
                let notified = self.done.notified();
                if self.state.lock().inflight == 0 {
                    return;
                }
                notified.await;
            }
        };
        tokio::time::timeout(Duration::from_secs(10), wait)
            .await
            .is_ok()
    }
}

#[derive(Default)]
pub struct CancelRegistry {
    map: crate::ids::IdMap<i32, Arc<CancelSlot>>,
}

/// Removes a client's key from the registry when the client goes.
pub struct CancelGuard {
    pub pid: i32,
    pub secret: i32,
    pub slot: Arc<CancelSlot>,
    registry: Arc<CancelRegistry>,
}

impl Drop for CancelGuard {
    fn drop(&mut self) {
        self.registry.map.remove(&self.pid);
    }
}

impl CancelRegistry {
    /// Issues a fresh random key for a client.
    pub fn register(self: &Arc<Self>) -> CancelGuard {
        loop {
            // Positive pids, as PostgreSQL's; PgBouncer also clears the sign bit.
            let pid = rand::random::<i32>() & 0x7fff_ffff;
            let secret = rand::random::<i32>();
            if pid == 0 {
                continue;
            }
            let slot = Arc::new(CancelSlot {
                secret,
                state: Mutex::new(SlotState::default()),
                done: Notify::new(),
                console: std::sync::atomic::AtomicBool::new(false),
                console_cancel: Notify::new(),
            });
            if let dashmap::mapref::entry::Entry::Vacant(e) = self.map.entry(pid) {
                e.insert(slot.clone());
                return CancelGuard {
                    pid,
                    secret,
                    slot,
                    registry: self.clone(),
                };
            }
        }
    }

    /// Handles a CancelRequest. Unknown keys, wrong secrets and idle clients are dropped
    /// silently, as PostgreSQL does. Forwarding to the server is bounded by `wait`
    /// (cancel_wait_timeout); past it the cancel socket is closed without a message.
    pub async fn cancel(&self, pid: i32, secret: i32, wait: Duration) {
        let Some(slot) = self.map.get(&pid).map(|s| s.clone()) else {
            tracing::debug!("failed cancel request: unknown key");
            return;
        };
        // Constant-time enough for a 4-byte secret: compare all bits at once.
        if (slot.secret ^ secret) != 0 {
            tracing::debug!("failed cancel request: wrong secret");
            return;
        }
        if slot.console.load(std::sync::atomic::Ordering::Acquire) {
            tracing::info!("cancel request for console client");
            slot.console_cancel.notify_one();
            return;
        }
        let key = {
            let mut st = slot.state.lock();
            let Some(k) = st.target.clone() else {
                tracing::debug!("cancel request for idle client");
                return;
            };
            st.inflight += 1;
            k
        };
        match tokio::time::timeout(wait, send_cancel(&key)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!("cancel request to {} failed: {e}", key.route),
            Err(_) => tracing::warn!("cancel request to {}: cancel_wait_timeout", key.route),
        }
        slot.state.lock().inflight -= 1;
        slot.done.notify_waiters();
    }
}

/// Sends the server's own CancelRequest and waits for the server to close, so the cancel
/// has been delivered before the release that waits for it goes on. The connection is
/// opened as the server's own was: with server_tls_sslmode above disable, SSLRequest
/// and handshake first and the CancelRequest inside TLS (PostgreSQL accepts it there, as
/// libpq 17 sends it); `N` means plaintext below require and no cancel from require on,
/// so the backend's key never crosses the network in the clear against the setting.
/// The error is text for the log.
pub(crate) async fn send_cancel(key: &ServerKey) -> Result<(), String> {
    let mut pkt = [0u8; 16];
    pkt[0..4].copy_from_slice(&16u32.to_be_bytes());
    pkt[4..8].copy_from_slice(&crate::proto::startup::CANCEL_REQUEST.to_be_bytes());
    pkt[8..12].copy_from_slice(&key.pid.to_be_bytes());
    pkt[12..16].copy_from_slice(&key.secret.to_be_bytes());
    let mut s = key.route.open(None).await.map_err(|e| e.log_text())?;
    s.write_all(&pkt).await.map_err(|e| e.to_string())?;
    // rustls may still hold the record.
    s.flush().await.map_err(|e| e.to_string())?;
    let mut sink = [0u8; 64];
    loop {
        match s.read(&mut sink).await {
            Ok(0) => return Ok(()),
            Ok(_) => {}
            // A backend that exits after a cancel may skip TLS close_notify; the
            // CancelRequest was read all the same.
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => return Err(e.to_string()),
        }
    }
}
