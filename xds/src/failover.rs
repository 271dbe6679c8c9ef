//! Which control-plane replica to connect to next, and how long to wait
//! first: pure, with the random source and the stream's lifetime passed in.
//!
//! - The first target is chosen at random, so sidecars spread over replicas.
//! - After a stream ends or a connect fails, the next attempt goes to a
//!   target not yet tried since the last healthy stream, chosen at random
//!   (so the sidecars of a lost replica spread over the others); once all
//!   have failed, a new round starts with every target but the last one.
//! - The delay before an attempt is exponential in the consecutive failures
//!   ([`Backoff`]), with jitter; a healthy stream (one that delivered a
//!   config, or stayed open for [`Policy::healthy_after`]) resets it, so a
//!   replica's loss costs one short delay.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::Duration;

use rand::seq::IndexedRandom;
use rand::Rng;

use crate::endpoints::Target;

/// Reconnect delays: `initial * 2^n` capped at `max`, each drawn uniformly
/// from its upper half so many sidecars don't reconnect in lockstep.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub initial: Duration,
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            initial: Duration::from_millis(200),
            max: Duration::from_secs(15),
        }
    }
}

impl Backoff {
    /// Delay before reconnect attempt `attempt` (0-based).
    pub fn delay(&self, attempt: u32, rng: &mut impl Rng) -> Duration {
        let ceiling = self
            .initial
            .saturating_mul(2u32.saturating_pow(attempt.min(20)))
            .min(self.max);
        let half = ceiling / 2;
        half + rng.random_range(Duration::ZERO..=half)
    }
}

/// Reconnect settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    pub backoff: Backoff,
    /// A stream open this long counts as healthy even if it delivered
    /// nothing (a replica that already has the sidecar's version sends nothing).
    pub healthy_after: Duration,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            backoff: Backoff::default(),
            healthy_after: Duration::from_secs(5),
        }
    }
}

/// How one attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attempt {
    /// The stream was opened (the replica answered the call).
    pub opened: bool,
    /// At least one response arrived.
    pub delivered: bool,
    /// From the connect to the end.
    pub lived: Duration,
}

type Key = (usize, SocketAddr);

/// Reconnect state of one client; survives every stream.
#[derive(Debug)]
pub struct Failover {
    policy: Policy,
    /// Consecutive failed attempts.
    failures: u32,
    /// Targets that failed since the last healthy stream or the last new round.
    tried: HashSet<Key>,
    /// The target of the last attempt.
    last: Option<Key>,
}

impl Failover {
    pub fn new(policy: Policy) -> Self {
        Failover {
            policy,
            failures: 0,
            tried: HashSet::new(),
            last: None,
        }
    }

    /// The target of the next attempt among `targets` (every address of
    /// every URL, resolved just now); `None` when there is none.
    pub fn pick<'a>(&mut self, targets: &'a [Target], rng: &mut impl Rng) -> Option<&'a Target> {
        let untried: Vec<&Target> = targets
            .iter()
            .filter(|t| !self.tried.contains(&t.key()))
            .collect();
        if !untried.is_empty() {
            return untried.choose(rng).copied();
        }
        // Every target failed: a new round, starting elsewhere than the last one.
        self.tried.clear();
        let others: Vec<&Target> = targets
            .iter()
            .filter(|t| Some(t.key()) != self.last)
            .collect();
        match others.choose(rng) {
            Some(target) => Some(*target),
            None => targets.choose(rng),
        }
    }

    /// Records how an attempt at `target` ended; returns the delay before the next.
    pub fn ended(&mut self, target: &Target, attempt: Attempt, rng: &mut impl Rng) -> Duration {
        let healthy =
            attempt.delivered || (attempt.opened && attempt.lived >= self.policy.healthy_after);
        if healthy {
            self.failures = 0;
            self.tried.clear();
        } else {
            self.failures = self.failures.saturating_add(1);
        }
        self.tried.insert(target.key());
        self.last = Some(target.key());
        self.policy.backoff.delay(self.failures, rng)
    }

    /// No target at all (every name failed to resolve): counts as a failure.
    pub fn unresolved(&mut self, rng: &mut impl Rng) -> Duration {
        self.failures = self.failures.saturating_add(1);
        self.policy.backoff.delay(self.failures, rng)
    }

    /// Whether the last attempt was healthy (no failure since): for tests and logs.
    pub fn consecutive_failures(&self) -> u32 {
        self.failures
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    fn target(url: usize, port: u16) -> Target {
        Target {
            url,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            endpoint: format!("http://127.0.0.1:{port}"),
            resolved: false,
        }
    }

    const FAILED: Attempt = Attempt {
        opened: false,
        delivered: false,
        lived: Duration::ZERO,
    };
    const DELIVERED: Attempt = Attempt {
        opened: true,
        delivered: true,
        lived: Duration::from_millis(10),
    };

    fn policy() -> Policy {
        Policy {
            backoff: Backoff {
                initial: Duration::from_millis(100),
                max: Duration::from_secs(2),
            },
            healthy_after: Duration::from_secs(5),
        }
    }

    #[test]
    fn backoff_grows_caps_and_jitters_within_upper_half() {
        let b = policy().backoff;
        let mut rng = StdRng::seed_from_u64(7);
        let mut seen = HashSet::new();
        for _ in 0..200 {
            let d0 = b.delay(0, &mut rng);
            assert!(d0 >= Duration::from_millis(50) && d0 <= Duration::from_millis(100));
            seen.insert(d0);
            let d3 = b.delay(3, &mut rng);
            assert!(d3 >= Duration::from_millis(400) && d3 <= Duration::from_millis(800));
            let big = b.delay(40, &mut rng);
            assert!(big >= Duration::from_secs(1) && big <= Duration::from_secs(2));
            let huge = b.delay(u32::MAX, &mut rng);
            assert!(huge <= Duration::from_secs(2));
        }
        assert!(
            seen.len() > 100,
            "delays are jittered: {} distinct",
            seen.len()
        );
    }

    #[test]
    fn the_same_seed_gives_the_same_choices() {
        let targets: Vec<Target> = (0..5).map(|i| target(i, 1000 + i as u16)).collect();
        let run = |seed| {
            let mut rng = StdRng::seed_from_u64(seed);
            let mut f = Failover::new(policy());
            (0..10)
                .map(|_| {
                    let t = f.pick(&targets, &mut rng).expect("a target").clone();
                    f.ended(&t, FAILED, &mut rng);
                    t.url
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(run(1), run(1));
        assert!((0..20).map(run).collect::<HashSet<_>>().len() > 1);
    }

    #[test]
    fn first_choice_spreads_over_replicas() {
        let targets: Vec<Target> = (0..3).map(|i| target(i, 1000 + i as u16)).collect();
        let mut rng = StdRng::seed_from_u64(3);
        let mut counts = [0usize; 3];
        for _ in 0..300 {
            let mut f = Failover::new(policy());
            counts[f.pick(&targets, &mut rng).expect("target").url] += 1;
        }
        assert!(counts.iter().all(|&c| c > 60), "{counts:?}");
    }

    #[test]
    fn after_a_stream_is_lost_the_next_attempt_goes_elsewhere_after_a_short_delay() {
        let targets = vec![target(0, 1), target(1, 2), target(2, 3)];
        let mut rng = StdRng::seed_from_u64(11);
        for _ in 0..100 {
            let mut f = Failover::new(policy());
            let first = f.pick(&targets, &mut rng).expect("target").clone();
            let delay = f.ended(&first, DELIVERED, &mut rng);
            assert!(delay <= Duration::from_millis(100), "{delay:?}");
            let next = f.pick(&targets, &mut rng).expect("target");
            assert_ne!(next.key(), first.key());
        }
    }

    #[test]
    fn failures_try_every_target_once_per_round_with_growing_delays() {
        let targets = vec![target(0, 1), target(1, 2), target(2, 3)];
        let mut rng = StdRng::seed_from_u64(5);
        let mut f = Failover::new(policy());
        let mut round = HashSet::new();
        let mut ceiling = Duration::from_millis(100);
        let mut last = None;
        for attempt in 0..9 {
            let t = f.pick(&targets, &mut rng).expect("target").clone();
            if attempt % 3 == 0 {
                round.clear();
                assert_ne!(
                    Some(t.key()),
                    last,
                    "a new round does not start with the last one"
                );
            }
            assert!(round.insert(t.key()), "tried twice in one round");
            let delay = f.ended(&t, FAILED, &mut rng);
            ceiling = (ceiling * 2).min(Duration::from_secs(2));
            assert!(
                delay <= ceiling && delay >= ceiling / 2,
                "{delay:?} vs {ceiling:?}"
            );
            last = Some(t.key());
        }
        assert_eq!(f.consecutive_failures(), 9);
    }

    #[test]
    fn a_quiet_stream_counts_as_healthy_only_after_healthy_after() {
        let mut rng = StdRng::seed_from_u64(9);
        let mut f = Failover::new(policy());
        let a = target(0, 1);
        for _ in 0..4 {
            f.ended(&a, FAILED, &mut rng);
        }
        let quiet = |lived| Attempt {
            opened: true,
            delivered: false,
            lived,
        };
        f.ended(&a, quiet(Duration::from_secs(1)), &mut rng);
        assert_eq!(
            f.consecutive_failures(),
            5,
            "open 1 s and silent: still failing"
        );
        let delay = f.ended(&a, quiet(Duration::from_secs(6)), &mut rng);
        assert_eq!(f.consecutive_failures(), 0);
        assert!(delay <= Duration::from_millis(100));
        // Not opened at all never counts, however long the connect took.
        let mut g = Failover::new(policy());
        g.ended(
            &a,
            Attempt {
                opened: false,
                delivered: false,
                lived: Duration::from_secs(60),
            },
            &mut rng,
        );
        assert_eq!(g.consecutive_failures(), 1);
    }

    #[test]
    fn one_target_is_retried_and_none_gives_none() {
        let targets = vec![target(0, 1)];
        let mut rng = StdRng::seed_from_u64(1);
        let mut f = Failover::new(policy());
        for _ in 0..3 {
            let t = f.pick(&targets, &mut rng).expect("the only target").clone();
            f.ended(&t, FAILED, &mut rng);
        }
        assert!(f.pick(&[], &mut rng).is_none());
        // The fourth failure in a row: 100 ms * 2^4, upper half.
        let delay = f.unresolved(&mut rng);
        assert!(delay >= Duration::from_millis(800), "{delay:?}");
        assert_eq!(f.consecutive_failures(), 4);
    }

    #[test]
    fn addresses_of_one_name_are_separate_targets() {
        let a = Target {
            url: 0,
            addr: "10.0.0.2:18000".parse().expect("addr"),
            endpoint: "http://cp:18000".into(),
            resolved: true,
        };
        let b = Target {
            addr: "10.0.0.3:18000".parse().expect("addr"),
            ..a.clone()
        };
        let targets = vec![a.clone(), b.clone()];
        let mut rng = StdRng::seed_from_u64(2);
        let mut f = Failover::new(policy());
        let first = f.pick(&targets, &mut rng).expect("target").clone();
        f.ended(&first, DELIVERED, &mut rng);
        let next = f.pick(&targets, &mut rng).expect("target");
        assert_ne!(next.addr, first.addr);
    }
}
