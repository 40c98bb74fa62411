//! Per-caller rate limits (a keyed GCRA, `governor`): one on creates
//! (`CreateSession`), one on every other mutation (Start, Switch, Pause,
//! Resume, Adjust, Complete, Cancel, Delete). Reads, `Subscribe` (bounded by
//! the stream limits) and `GetServerTime` are not limited here.
//!
//! A caller over its limit gets `RESOURCE_EXHAUSTED` at once, before its
//! request is looked at, with `google.rpc.RetryInfo` saying when the next call
//! would be let through; nothing is queued or slowed down.
//!
//! A tenant with its own rate in the keys file (`[[tenant]]`) gets a limiter
//! of its own at that rate, made on its first call and remade when the rate
//! changes; one per tenant and kind, so bounded by the keys file.
//!
//! Memory: one small cell per caller seen within the last burst's refill time.
//! Idle callers are dropped every `HOUSEKEEPING`; beyond `MAX_CALLERS` tracked
//! at once (a flood of addresses), new callers share one overflow limit, so
//! the tables stay bounded whatever the number of peers.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

use super::caller::Caller;
use crate::app::AppError;
use crate::config::Rate;

/// Callers tracked per limiter before new ones share the overflow cell.
pub const MAX_CALLERS: usize = 100_000;
/// How often callers whose cell is back to full are forgotten.
const HOUSEKEEPING: Duration = Duration::from_secs(30);

/// What a call spends.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Spend {
    Create,
    Mutation,
}

impl Spend {
    fn what(self) -> &'static str {
        match self {
            Spend::Create => "creates",
            Spend::Mutation => "mutations",
        }
    }
}

struct Limiter {
    cells: DefaultKeyedRateLimiter<Caller>,
    per_second: NonZeroU32,
    rate: Rate,
}

impl Limiter {
    fn new(rate: Rate) -> Self {
        let quota = Quota::per_second(rate.per_second).allow_burst(rate.burst);
        Self {
            cells: RateLimiter::keyed(quota),
            per_second: rate.per_second,
            rate,
        }
    }

    fn check(&self, caller: &Caller) -> Result<(), Duration> {
        let overflow;
        let mut key = caller;
        if self.cells.len() >= MAX_CALLERS {
            self.cells.retain_recent();
            if self.cells.len() >= MAX_CALLERS {
                overflow = Caller::new("overflow");
                key = &overflow;
            }
        }
        self.cells
            .check_key(key)
            .map_err(|not_until| not_until.wait_time_from(DefaultClock::default().now()))
    }

    fn housekeeping(&self) {
        self.cells.retain_recent();
        self.cells.shrink_to_fit();
    }
}

/// The limits of one server; `None` is off.
pub struct RateLimits {
    creates: Option<Limiter>,
    mutations: Option<Limiter>,
    /// Tenants' own limiters (keys file), by tenant and kind.
    overrides: Mutex<HashMap<(String, Spend), Arc<Limiter>>>,
}

impl RateLimits {
    /// Starts the housekeeping task (it ends when the limits are dropped).
    pub fn new(creates: Option<Rate>, mutations: Option<Rate>) -> Arc<Self> {
        let limits = Arc::new(Self {
            creates: creates.map(Limiter::new),
            mutations: mutations.map(Limiter::new),
            overrides: Mutex::default(),
        });
        tokio::spawn(housekeeping(Arc::downgrade(&limits)));
        limits
    }

    /// `Ok` when `caller` may spend one `spend` now; `tenant` with its own
    /// `rate` (from the keys file) is limited at that rate instead.
    pub fn check(
        &self,
        spend: Spend,
        caller: &Caller,
        tenant_rate: Option<(&str, Rate)>,
    ) -> Result<(), AppError> {
        let own;
        let limiter = match (tenant_rate, spend) {
            (Some((tenant, rate)), _) => {
                own = self.tenant_limiter(tenant, spend, rate);
                &*own
            }
            (None, Spend::Create) => match &self.creates {
                Some(l) => l,
                None => return Ok(()),
            },
            (None, Spend::Mutation) => match &self.mutations {
                Some(l) => l,
                None => return Ok(()),
            },
        };
        limiter
            .check(caller)
            .map_err(|wait| AppError::ResourceExhausted {
                message: format!(
                    "rate limit: at most {} {} a second per caller; retry after {} ms",
                    limiter.per_second,
                    spend.what(),
                    wait.as_millis().max(1)
                ),
                // Never zero: a client told "retry after 0" would spin.
                retry_after: wait.max(Duration::from_millis(1)),
            })
    }
}

impl RateLimits {
    fn tenant_limiter(&self, tenant: &str, spend: Spend, rate: Rate) -> Arc<Limiter> {
        let mut overrides = self.overrides.lock().unwrap_or_else(|p| p.into_inner());
        let slot = overrides
            .entry((tenant.to_owned(), spend))
            .or_insert_with(|| Arc::new(Limiter::new(rate)));
        if slot.rate != rate {
            *slot = Arc::new(Limiter::new(rate));
        }
        slot.clone()
    }
}

async fn housekeeping(limits: Weak<RateLimits>) {
    let mut tick = tokio::time::interval(HOUSEKEEPING);
    tick.tick().await;
    loop {
        tick.tick().await;
        let Some(limits) = limits.upgrade() else {
            return;
        };
        for l in [&limits.creates, &limits.mutations].into_iter().flatten() {
            l.housekeeping();
        }
        let overrides: Vec<_> = limits
            .overrides
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect();
        for l in overrides {
            l.housekeeping();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rate(per_second: u32, burst: u32) -> Rate {
        Rate::new(per_second, burst).unwrap()
    }

    #[tokio::test]
    async fn a_caller_gets_its_burst_then_waits_and_others_are_not_affected() {
        let limits = RateLimits::new(Some(rate(1, 3)), None);
        let a = Caller::new("a");
        for _ in 0..3 {
            limits.check(Spend::Create, &a, None).unwrap();
        }
        let Err(AppError::ResourceExhausted {
            retry_after,
            message,
        }) = limits.check(Spend::Create, &a, None)
        else {
            panic!("the fourth create within the burst must be refused");
        };
        assert!(
            retry_after > Duration::from_millis(900) && retry_after <= Duration::from_secs(1),
            "{retry_after:?}"
        );
        assert!(message.contains("at most 1 creates a second"), "{message}");
        limits
            .check(Spend::Create, &Caller::new("b"), None)
            .unwrap();
        // Mutations are off here: never limited.
        for _ in 0..100 {
            limits.check(Spend::Mutation, &a, None).unwrap();
        }
    }

    #[tokio::test]
    async fn a_tenant_with_its_own_rate_is_limited_at_it() {
        let limits = RateLimits::new(Some(rate(1, 1)), None);
        let a = Caller::new("tenant:acme");
        let acme = Some(("acme", rate(1, 3)));
        for _ in 0..3 {
            limits.check(Spend::Create, &a, acme).unwrap();
        }
        assert!(limits.check(Spend::Create, &a, acme).is_err());
        // Its own mutation rate applies even where the server has none.
        let acme = Some(("acme", rate(1, 1)));
        limits.check(Spend::Mutation, &a, acme).unwrap();
        assert!(limits.check(Spend::Mutation, &a, acme).is_err());
        // A new rate is a new limiter.
        limits
            .check(Spend::Mutation, &a, Some(("acme", rate(1, 2))))
            .unwrap();
    }

    #[tokio::test]
    async fn beyond_max_callers_new_callers_share_one_overflow_cell() {
        let limiter = Limiter::new(rate(1, 1));
        for i in 0..MAX_CALLERS {
            limiter.check(&Caller::new(format!("c{i}"))).unwrap();
        }
        assert_eq!(limiter.cells.len(), MAX_CALLERS);
        limiter.check(&Caller::new("new-1")).unwrap();
        assert!(
            limiter.check(&Caller::new("new-2")).is_err(),
            "shares new-1's cell"
        );
        assert_eq!(
            limiter.cells.len(),
            MAX_CALLERS + 1,
            "only the overflow cell was added"
        );
    }
}
