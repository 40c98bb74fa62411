//! Subscribe streams open per tenant, bounded by the tenant's `max_streams`
//! in the keys file (`[[tenant]]`); without one, only the server-wide bound
//! applies (`SYNCKAIROS_MAX_SUBSCRIBE_STREAMS`). Counted on this replica:
//! each replica holds its own streams. A slot is given back when its stream
//! ends, however it ends (the slot lives in the response stream tonic drops).
//! Each change sets `synckairos_tenant_streams_open{tenant}`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::app::AppError;
use crate::engine::Tenant;
use crate::prometheus::names;

#[derive(Default)]
pub struct TenantStreams {
    open: Mutex<HashMap<Tenant, u32>>,
}

/// One open stream of a tenant.
pub struct Slot {
    streams: Arc<TenantStreams>,
    tenant: Tenant,
}

impl TenantStreams {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Tenant, u32>> {
        self.open.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A slot for one more stream of `tenant`, unless it has `max` open.
    pub fn acquire(self: &Arc<Self>, tenant: &Tenant, max: Option<u32>) -> Result<Slot, AppError> {
        let mut open = self.lock();
        let n = open.entry(tenant.clone()).or_default();
        if max.is_some_and(|max| *n >= max) {
            return Err(AppError::ResourceExhausted {
                message: format!(
                    "tenant {tenant} has {n} Subscribe streams open on this server, its max_streams"
                ),
                retry_after: std::time::Duration::from_secs(1),
            });
        }
        *n += 1;
        record(tenant, *n);
        Ok(Slot {
            streams: self.clone(),
            tenant: tenant.clone(),
        })
    }

    #[cfg(test)]
    fn open(&self, tenant: &Tenant) -> u32 {
        self.lock().get(tenant).copied().unwrap_or(0)
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self.streams.lock();
        if let Some(n) = open.get_mut(&self.tenant) {
            *n -= 1;
            record(&self.tenant, *n);
            if *n == 0 {
                open.remove(&self.tenant);
            }
        }
    }
}

fn record(tenant: &Tenant, open: u32) {
    metrics::gauge!(names::TENANT_STREAMS_OPEN, "tenant" => tenant.as_str().to_owned())
        .set(f64::from(open));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tenant_gets_at_most_its_max_and_slots_come_back() {
        let s = Arc::new(TenantStreams::default());
        let acme = Tenant::parse("t", "acme").unwrap();
        let other = Tenant::parse("t", "other").unwrap();
        let a = s.acquire(&acme, Some(2)).unwrap();
        let _b = s.acquire(&acme, Some(2)).unwrap();
        assert!(s.acquire(&acme, Some(2)).is_err());
        let _c = s.acquire(&other, Some(2)).unwrap();
        drop(a);
        assert_eq!(s.open(&acme), 1);
        let _d = s.acquire(&acme, Some(2)).unwrap();
        assert!(s.acquire(&acme, None).is_ok(), "no max: never refused");
    }
}
