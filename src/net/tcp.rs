//! TCP socket tuning shared by client and server sockets: keepalive (tcp_keepalive,
//! tcp_keepidle, tcp_keepintvl, tcp_keepcnt) and TCP_USER_TIMEOUT (tcp_user_timeout).
//!
//! These are what notice a half-open connection (a peer that vanished without FIN/RST:
//! a cut network, a dead host): without them an idle socket looks healthy forever and a
//! write into it is retransmitted for ~15 minutes (PgBouncer #1355).

use std::time::Duration;

use socket2::{SockRef, TcpKeepalive};
use tokio::net::TcpStream;

use crate::config::General;

/// The socket options of the `[pgbouncer]` section; 0 = the OS default, as in PgBouncer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TcpOptions {
    pub keepalive: bool,
    /// Seconds of idleness before the first probe.
    pub keepidle: u32,
    /// Seconds between probes.
    pub keepintvl: u32,
    /// Unanswered probes before the connection is dropped.
    pub keepcnt: u32,
    /// Milliseconds transmitted data may stay unacknowledged before the connection is
    /// dropped (Linux TCP_USER_TIMEOUT).
    pub user_timeout: u32,
}

impl TcpOptions {
    pub fn from_general(g: &General) -> TcpOptions {
        TcpOptions {
            keepalive: g.tcp_keepalive,
            keepidle: g.tcp_keepidle,
            keepintvl: g.tcp_keepintvl,
            keepcnt: g.tcp_keepcnt,
            user_timeout: g.tcp_user_timeout,
        }
    }

    /// Applies the options to `s`. Errors are returned so the caller can log them; a
    /// socket whose tuning failed still works, it just detects dead peers later.
    pub fn apply(&self, s: &TcpStream) -> std::io::Result<()> {
        let sock = SockRef::from(s);
        if self.keepalive {
            // Only the values set are passed: TCP_KEEPIDLE = 0 is EINVAL, and 0 means
            // "leave the OS default" in PgBouncer's settings.
            let mut ka = TcpKeepalive::new();
            if self.keepidle > 0 {
                ka = ka.with_time(Duration::from_secs(self.keepidle.into()));
            }
            if self.keepintvl > 0 {
                ka = ka.with_interval(Duration::from_secs(self.keepintvl.into()));
            }
            #[cfg(any(target_os = "linux", target_os = "android", target_os = "freebsd"))]
            if self.keepcnt > 0 {
                ka = ka.with_retries(self.keepcnt);
            }
            sock.set_tcp_keepalive(&ka)?;
        } else {
            sock.set_keepalive(false)?;
        }
        #[cfg(any(target_os = "linux", target_os = "android"))]
        if self.user_timeout > 0 {
            sock.set_tcp_user_timeout(Some(Duration::from_millis(self.user_timeout.into())))?;
        }
        Ok(())
    }

    /// [`apply`](Self::apply), logging a failure once per socket instead of failing it.
    /// `what` names the socket in the warning; it is only formatted if one is logged.
    pub fn apply_or_log(&self, s: &TcpStream, what: impl std::fmt::Display) {
        if let Err(e) = self.apply(s) {
            tracing::warn!("{what}: setting TCP keepalive/user timeout failed: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn options_are_applied() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let c = TcpStream::connect(addr).await.unwrap();
        let opts = TcpOptions {
            keepalive: true,
            keepidle: 7,
            keepintvl: 3,
            keepcnt: 4,
            user_timeout: 2500,
        };
        opts.apply(&c).unwrap();
        let s = SockRef::from(&c);
        assert!(s.keepalive().unwrap());
        assert_eq!(s.keepalive_time().unwrap(), Duration::from_secs(7));
        #[cfg(target_os = "linux")]
        {
            assert_eq!(s.keepalive_interval().unwrap(), Duration::from_secs(3));
            assert_eq!(s.keepalive_retries().unwrap(), 4);
            assert_eq!(
                s.tcp_user_timeout().unwrap(),
                Some(Duration::from_millis(2500))
            );
        }
        TcpOptions::default().apply(&c).unwrap();
        assert!(!s.keepalive().unwrap());
    }
}
