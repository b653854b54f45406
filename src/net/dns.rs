//! Host name resolution with a cache: answers are kept for `dns_max_ttl`, failures for
//! `dns_nxdomain_ttl` (the record's own TTL is ignored, as in PgBouncer). The resolver is
//! the system's (`getaddrinfo` through `tokio::net::lookup_host`).
//!
//! The cache also notices when a name's answer changes: every such change bumps
//! [`DnsCache::changes`], which pools watch to replace servers whose address is no longer
//! among the answers (gracefully: closed when released, not killed). A failed lookup is
//! not a change: servers are not dropped because DNS had a bad moment.

use std::collections::HashMap;
use std::future::Future;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// The answer for one name: its addresses in resolver order, or why there are none.
pub type Answer = Result<Arc<[IpAddr]>, String>;

struct Entry {
    answer: Answer,
    /// The last successful answer, kept through failures so a change is detected against
    /// it and so pools can still tell which servers are current.
    last_good: Option<Arc<[IpAddr]>>,
    expires: Instant,
    /// A background refresh is running; others need not start one.
    refreshing: bool,
}

#[derive(Default)]
pub struct DnsCache {
    entries: Mutex<HashMap<String, Entry>>,
    changes: AtomicU64,
}

static GLOBAL: LazyLock<DnsCache> = LazyLock::new(DnsCache::default);

/// The process-wide cache.
pub fn cache() -> &'static DnsCache {
    &GLOBAL
}

/// `host` as an IP address if it is one (IPv6 may be bracketed): no lookup needed.
pub fn literal(host: &str) -> Option<IpAddr> {
    host.trim_start_matches('[')
        .trim_end_matches(']')
        .parse()
        .ok()
}

async fn system_lookup(host: String) -> std::io::Result<Vec<IpAddr>> {
    Ok(tokio::net::lookup_host((host.as_str(), 0))
        .await?
        .map(|a| a.ip())
        .collect())
}

impl DnsCache {
    /// How many times some name's answer has changed; compare two readings.
    pub fn changes(&self) -> u64 {
        self.changes.load(Ordering::Acquire)
    }

    /// The addresses of `host`, from the cache while fresh, else looked up now.
    pub async fn resolve(&self, host: &str, ttl: Duration, nx_ttl: Duration) -> Answer {
        self.resolve_with(host, ttl, nx_ttl, system_lookup).await
    }

    /// [`resolve`](Self::resolve) with the lookup function given (tests).
    pub async fn resolve_with<F, Fut>(
        &self,
        host: &str,
        ttl: Duration,
        nx_ttl: Duration,
        lookup: F,
    ) -> Answer
    where
        F: FnOnce(String) -> Fut,
        Fut: Future<Output = std::io::Result<Vec<IpAddr>>>,
    {
        if let Some(ip) = literal(host) {
            return Ok(Arc::from([ip]));
        }
        if let Some(e) = self.entries.lock().get(host) {
            if Instant::now() < e.expires {
                return e.answer.clone();
            }
        }
        let res = lookup(host.to_string()).await;
        self.store(host, res, ttl, nx_ttl)
    }

    fn store(
        &self,
        host: &str,
        res: std::io::Result<Vec<IpAddr>>,
        ttl: Duration,
        nx_ttl: Duration,
    ) -> Answer {
        let answer: Answer = match res {
            Ok(mut v) => {
                // getaddrinfo lists an address once per socket type unless hinted; keep
                // the first of each, in the resolver's (RFC 6724) order.
                let mut seen = Vec::with_capacity(v.len());
                v.retain(|ip| {
                    let new = !seen.contains(ip);
                    if new {
                        seen.push(*ip);
                    }
                    new
                });
                if v.is_empty() {
                    Err("no addresses".to_string())
                } else {
                    Ok(Arc::from(v))
                }
            }
            Err(e) => Err(e.to_string()),
        };
        let now = Instant::now();
        let expires = now + if answer.is_ok() { ttl } else { nx_ttl };
        let mut entries = self.entries.lock();
        let e = entries.entry(host.to_string()).or_insert_with(|| Entry {
            answer: answer.clone(),
            last_good: None,
            expires,
            refreshing: false,
        });
        e.answer = answer.clone();
        e.expires = expires;
        e.refreshing = false;
        if let Ok(new) = &answer {
            if let Some(old) = &e.last_good {
                if !same_set(old, new) {
                    tracing::info!("DNS: {host} now resolves to {}", list(new));
                    self.changes.fetch_add(1, Ordering::AcqRel);
                }
            }
            e.last_good = Some(new.clone());
        }
        answer
    }

    /// The last successful answer for `host`, fresh or not (no lookup). IP literals
    /// answer themselves.
    pub fn last_good(&self, host: &str) -> Option<Arc<[IpAddr]>> {
        if let Some(ip) = literal(host) {
            return Some(Arc::from([ip]));
        }
        self.entries
            .lock()
            .get(host)
            .and_then(|e| e.last_good.clone())
    }

    /// Starts a background lookup of `host` if its entry has expired (and none is
    /// running), so a changed answer is noticed even while no server is being opened.
    /// Names never looked up are left alone: the first connect resolves them.
    pub fn refresh_if_stale(&'static self, host: &str, ttl: Duration, nx_ttl: Duration) {
        if literal(host).is_some() || tokio::runtime::Handle::try_current().is_err() {
            return;
        }
        {
            let mut entries = self.entries.lock();
            let Some(e) = entries.get_mut(host) else {
                return;
            };
            if e.refreshing || Instant::now() < e.expires {
                return;
            }
            e.refreshing = true;
        }
        let host = host.to_string();
        tokio::spawn(async move {
            let res = system_lookup(host.clone()).await;
            let _ = self.store(&host, res, ttl, nx_ttl);
        });
    }
}

fn same_set(a: &[IpAddr], b: &[IpAddr]) -> bool {
    a.len() == b.len() && a.iter().all(|x| b.contains(x))
}

fn list(a: &[IpAddr]) -> String {
    a.iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io;

    fn ips(v: &[&str]) -> Vec<IpAddr> {
        v.iter().map(|s| s.parse().unwrap()).collect()
    }

    #[tokio::test]
    async fn literals_skip_the_cache() {
        let c = DnsCache::default();
        let a = c
            .resolve_with("[::1]", Duration::ZERO, Duration::ZERO, |_| async {
                panic!("no lookup for a literal")
            })
            .await
            .unwrap();
        assert_eq!(&a[..], &ips(&["::1"])[..]);
    }

    #[tokio::test]
    async fn answers_are_cached_for_the_ttl_and_changes_counted() {
        let c = DnsCache::default();
        let ttl = Duration::from_secs(60);
        let a = c
            .resolve_with("db", ttl, ttl, |_| async {
                Ok(ips(&["10.0.0.1", "10.0.0.2", "10.0.0.1"]))
            })
            .await
            .unwrap();
        assert_eq!(&a[..], &ips(&["10.0.0.1", "10.0.0.2"])[..]);
        // Fresh: no lookup.
        let b = c
            .resolve_with("db", ttl, ttl, |_| async { panic!("cached") })
            .await
            .unwrap();
        assert_eq!(a, b);
        assert_eq!(c.changes(), 0);

        // Expired (ttl 0): looked up again; same set in another order is no change.
        let z = Duration::ZERO;
        for order in [["10.0.0.1", "10.0.0.2"], ["10.0.0.2", "10.0.0.1"]] {
            c.resolve_with("db2", z, z, |_| async move { Ok(ips(&order)) })
                .await
                .unwrap();
        }
        assert_eq!(c.changes(), 0);
        // A failure is cached as such (for the nxdomain ttl) but is not a change, and
        // keeps the last answer.
        let e = c
            .resolve_with("db2", z, ttl, |_| async {
                Err(io::Error::other("NXDOMAIN"))
            })
            .await;
        assert!(e.is_err());
        assert!(c
            .resolve_with("db2", z, ttl, |_| async {
                panic!("negative answer cached")
            })
            .await
            .is_err());
        assert_eq!(c.changes(), 0);
        assert_eq!(c.last_good("db2").unwrap().len(), 2);
    }

    #[tokio::test]
    async fn a_different_answer_is_a_change() {
        let c = DnsCache::default();
        let z = Duration::ZERO;
        c.resolve_with("h", z, z, |_| async { Ok(ips(&["10.0.0.1"])) })
            .await
            .unwrap();
        c.resolve_with("h", z, z, |_| async { Ok(ips(&["10.0.0.9"])) })
            .await
            .unwrap();
        assert_eq!(c.changes(), 1);
        assert_eq!(&c.last_good("h").unwrap()[..], &ips(&["10.0.0.9"])[..]);
    }
}
