//! Racing connection attempts against one deadline, happy-eyeballs style (RFC 8305):
//! candidates are tried in order, the next one starting after a short stagger while
//! earlier ones are still pending, or at once when one fails. The first attempt to
//! succeed wins and the others are dropped (their tasks aborted). Nothing outlives the
//! deadline: a host list of black holes costs one budget, not one per address.
//!
//! Also here: the memory of recently failed addresses, which puts them at the back of the
//! next attempt's order for a while.
//!
//! Generic over the candidate and the attempt, so the policy is tested here without
//! sockets; `server/login.rs` races "connect + log in" over its resolved addresses.

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio::task::{Id, JoinSet};

/// The default delay before the next candidate starts while earlier ones are pending.
pub const STAGGER: Duration = Duration::from_millis(250);
/// Never stagger by less than this, however many candidates share a small budget.
const MIN_STAGGER: Duration = Duration::from_millis(20);

/// The stagger for `n` candidates within `budget`: [`STAGGER`], shortened so that every
/// candidate starts within the first half of the budget (a short budget over a long
/// list still reaches the last entry with time left to log in).
pub fn stagger_for(n: usize, budget: Option<Duration>) -> Duration {
    match budget {
        Some(b) if n > 1 => {
            let per = b / 2 / (n as u32 - 1).max(1);
            per.clamp(MIN_STAGGER, STAGGER)
        }
        _ => STAGGER,
    }
}

/// How a race ended.
#[derive(Debug)]
pub enum Outcome<C, T, E> {
    Won {
        value: T,
        winner: C,
        /// Candidates started before the winner and still pending when it won: slower
        /// than a later start, so worth trying after the others next time.
        slower: Vec<C>,
    },
    Lost {
        /// Every attempt that finished with an error, in the order they finished.
        failures: Vec<(C, E)>,
        /// Attempts still pending when the race ended (deadline, or a stopping error).
        pending: Vec<C>,
        /// The deadline passed.
        timed_out: bool,
    },
}

/// Races `attempt` over `cands` (in order) until one succeeds, all have failed, an error
/// for which `stop` is true arrives, or `deadline` passes (`None` = no deadline).
pub async fn race<C, T, E, F, Fut>(
    cands: Vec<C>,
    deadline: Option<Instant>,
    stagger: Duration,
    mut attempt: F,
    stop: impl Fn(&E) -> bool,
) -> Outcome<C, T, E>
where
    C: Clone,
    F: FnMut(C) -> Fut,
    Fut: Future<Output = Result<T, E>> + Send + 'static,
    T: Send + 'static,
    E: Send + 'static,
{
    let mut set: JoinSet<Result<T, E>> = JoinSet::new();
    // Task id → candidate index, for the attempts still pending.
    let mut pending: HashMap<Id, usize> = HashMap::new();
    let mut failures = Vec::new();
    let mut next = 0usize;
    let mut next_at = Instant::now();
    let lost = |failures, pending: &HashMap<Id, usize>, timed_out| {
        let mut idx: Vec<usize> = pending.values().copied().collect();
        idx.sort_unstable();
        Outcome::Lost {
            failures,
            pending: idx.into_iter().map(|i: usize| cands[i].clone()).collect(),
            timed_out,
        }
    };
    loop {
        let now = Instant::now();
        if deadline.is_some_and(|d| now >= d) {
            return lost(failures, &pending, true);
        }
        if next < cands.len() && (pending.is_empty() || now >= next_at) {
            let h = set.spawn(attempt(cands[next].clone()));
            pending.insert(h.id(), next);
            next += 1;
            next_at = now + stagger;
            continue;
        }
        if pending.is_empty() {
            return lost(failures, &pending, false);
        }
        let more = next < cands.len();
        let far = now + Duration::from_secs(86_400);
        tokio::select! {
            r = set.join_next_with_id() => {
                let (id, res) = match r {
                    Some(Ok((id, res))) => (id, res),
                    // A panicked attempt is just a lost one; never the whole connect.
                    Some(Err(e)) => {
                        pending.remove(&e.id());
                        next_at = Instant::now();
                        continue;
                    }
                    None => return lost(failures, &pending, false),
                };
                let Some(i) = pending.remove(&id) else { continue };
                match res {
                    Ok(value) => {
                        let mut earlier: Vec<usize> =
                            pending.values().copied().filter(|&j| j < i).collect();
                        earlier.sort_unstable();
                        return Outcome::Won {
                            value,
                            winner: cands[i].clone(),
                            slower: earlier.into_iter().map(|j| cands[j].clone()).collect(),
                        };
                    }
                    Err(e) => {
                        let halt = stop(&e);
                        failures.push((cands[i].clone(), e));
                        if halt {
                            return lost(failures, &pending, false);
                        }
                        // A failure frees its turn: the next candidate starts now.
                        next_at = Instant::now();
                    }
                }
            }
            _ = tokio::time::sleep_until(next_at.into()), if more => {}
            _ = tokio::time::sleep_until(deadline.unwrap_or(far).into()) => {
                return lost(failures, &pending, true);
            }
        }
    }
}

/// Recently failed (or slow) addresses, each remembered for as long as the caller's
/// retry period says, so the next attempt tries them last instead of waiting on them
/// first.
pub struct FailedAddrs<K> {
    map: Mutex<HashMap<K, Instant>>,
}

impl<K> Default for FailedAddrs<K> {
    fn default() -> Self {
        FailedAddrs {
            map: Mutex::new(HashMap::new()),
        }
    }
}

/// Entries beyond this are pruned of the stale ones (a long-running process with DNS
/// churn must not grow the map without bound).
const PRUNE_AT: usize = 1024;
/// An entry older than this is stale whatever the retry period.
const MAX_MEMORY: Duration = Duration::from_secs(3600);

impl<K: Hash + Eq + Clone> FailedAddrs<K> {
    pub fn failed(&self, k: &K) {
        let mut m = self.map.lock();
        if m.len() >= PRUNE_AT {
            m.retain(|_, at| at.elapsed() < MAX_MEMORY);
        }
        m.insert(k.clone(), Instant::now());
    }

    pub fn succeeded(&self, k: &K) {
        let mut m = self.map.lock();
        if !m.is_empty() {
            m.remove(k);
        }
    }

    /// Failed less than `window` ago.
    pub fn is_recent(&self, k: &K, window: Duration) -> bool {
        self.map
            .lock()
            .get(k)
            .is_some_and(|at| at.elapsed() < window)
    }

    /// Moves recently failed candidates to the back, keeping the order otherwise (and
    /// among the failed ones: the oldest failure first).
    pub fn order<C>(&self, cands: Vec<C>, key: impl Fn(&C) -> &K, window: Duration) -> Vec<C> {
        let m = self.map.lock();
        let (mut good, mut bad): (Vec<_>, Vec<_>) = cands
            .into_iter()
            .partition(|c| m.get(key(c)).is_none_or(|at| at.elapsed() >= window));
        bad.sort_by_key(|c| m.get(key(c)).copied());
        good.append(&mut bad);
        good
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A candidate: (name, delay ms, succeeds?). `None` delay = never finishes.
    type Cand = (&'static str, Option<u64>, bool);

    async fn run(
        cands: Vec<Cand>,
        budget_ms: u64,
        stagger_ms: u64,
    ) -> (Outcome<Cand, &'static str, &'static str>, Duration) {
        let start = Instant::now();
        let out = race(
            cands,
            Some(start + Duration::from_millis(budget_ms)),
            Duration::from_millis(stagger_ms),
            |c: Cand| async move {
                match c.1 {
                    Some(ms) => tokio::time::sleep(Duration::from_millis(ms)).await,
                    None => std::future::pending::<()>().await,
                }
                if c.2 {
                    Ok(c.0)
                } else {
                    Err(c.0)
                }
            },
            |e: &&str| e.starts_with("stop"),
        )
        .await;
        (out, start.elapsed())
    }

    #[tokio::test]
    async fn black_holes_first_then_the_healthy_entry_wins() {
        let (out, took) = run(
            vec![
                ("hole1", None, false),
                ("hole2", None, false),
                ("ok", Some(10), true),
            ],
            15_000,
            250,
        )
        .await;
        match out {
            Outcome::Won { value, slower, .. } => {
                assert_eq!(value, "ok");
                let names: Vec<_> = slower.iter().map(|c| c.0).collect();
                assert_eq!(names, ["hole1", "hole2"]);
            }
            o => panic!("{o:?}"),
        }
        assert!(
            took >= Duration::from_millis(500) && took < Duration::from_millis(1000),
            "{took:?}"
        );
    }

    #[tokio::test]
    async fn one_budget_for_all_black_holes() {
        let (out, took) = run(
            vec![("a", None, false), ("b", None, false), ("c", None, false)],
            2_000,
            250,
        )
        .await;
        match out {
            Outcome::Lost {
                failures,
                pending,
                timed_out,
            } => {
                assert!(timed_out && failures.is_empty());
                assert_eq!(pending.len(), 3);
            }
            o => panic!("{o:?}"),
        }
        assert!(
            took >= Duration::from_millis(2000) && took < Duration::from_millis(2400),
            "{took:?}"
        );
    }

    #[tokio::test]
    async fn a_failure_starts_the_next_at_once() {
        let (out, took) = run(
            vec![
                ("refused", Some(1), false),
                ("refused2", Some(1), false),
                ("ok", Some(5), true),
            ],
            15_000,
            250,
        )
        .await;
        assert!(matches!(out, Outcome::Won { value: "ok", .. }), "{out:?}");
        assert!(took < Duration::from_millis(200), "{took:?}");
        let (out, _) = run(
            vec![("refused", Some(1), false), ("refused2", Some(2), false)],
            15_000,
            250,
        )
        .await;
        match out {
            Outcome::Lost {
                failures,
                timed_out,
                ..
            } => {
                assert!(!timed_out);
                assert_eq!(
                    failures.iter().map(|f| f.1).collect::<Vec<_>>(),
                    ["refused", "refused2"]
                );
            }
            o => panic!("{o:?}"),
        }
    }

    #[tokio::test]
    async fn a_stopping_error_ends_the_race() {
        let (out, took) = run(
            vec![
                ("hole", None, false),
                ("stop: bad password", Some(5), false),
                ("later", Some(1), true),
            ],
            15_000,
            250,
        )
        .await;
        match out {
            Outcome::Lost {
                failures, pending, ..
            } => {
                assert_eq!(failures[0].1, "stop: bad password");
                assert_eq!(pending.len(), 1);
            }
            o => panic!("{o:?}"),
        }
        assert!(took < Duration::from_millis(300), "{took:?}");
    }

    #[test]
    fn stagger_fits_the_budget() {
        assert_eq!(stagger_for(1, Some(Duration::from_secs(15))), STAGGER);
        assert_eq!(stagger_for(12, Some(Duration::from_secs(15))), STAGGER);
        assert_eq!(
            stagger_for(11, Some(Duration::from_secs(1))),
            Duration::from_millis(50)
        );
        assert_eq!(stagger_for(1000, Some(Duration::from_secs(1))), MIN_STAGGER);
        assert_eq!(stagger_for(3, None), STAGGER);
    }

    #[test]
    fn failed_addresses_go_last() {
        let f = FailedAddrs::<u32>::default();
        f.failed(&1);
        f.failed(&3);
        let w = Duration::from_secs(15);
        assert_eq!(f.order(vec![1, 2, 3, 4], |c| c, w), [2, 4, 1, 3]);
        f.succeeded(&1);
        assert_eq!(f.order(vec![1, 2, 3, 4], |c| c, w), [1, 2, 4, 3]);
        assert!(f.is_recent(&3, w));
        assert_eq!(
            f.order(vec![1, 2, 3, 4], |c| c, Duration::ZERO),
            [1, 2, 3, 4]
        );
    }
}
