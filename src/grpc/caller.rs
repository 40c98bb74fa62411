//! Who is calling: the identity per-caller limits are keyed by.
//!
//! A layer that authenticates callers (API keys, tenants: the next issue)
//! puts a [`Caller`] into the request's extensions; [`caller_of`] takes that
//! one when it is there. Until then a caller is its peer's IP address (the
//! port left out, so that opening more connections does not make a caller
//! new; an IPv6 caller is its /64, the block one host is usually given, so
//! that walking through its addresses does not make it new either). Behind a proxy or load balancer that does not keep the client's
//! address, every client shares the proxy's address and so one limit: raise
//! the limits there, or key them by credentials once callers authenticate.

use std::net::{IpAddr, Ipv6Addr};
use std::sync::Arc;

use tonic::Request;

/// A caller's identity, e.g. `ip:203.0.113.7`; cheap to clone.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Caller(Arc<str>);

impl Caller {
    pub fn new(id: impl Into<Arc<str>>) -> Self {
        Self(id.into())
    }

    /// The caller at `ip`: an IPv4 address, or an IPv6 /64 (an IPv4-mapped
    /// IPv6 address counts as its IPv4 one).
    pub fn peer(ip: IpAddr) -> Self {
        match ip.to_canonical() {
            IpAddr::V4(v4) => Self::new(format!("ip:{v4}")),
            IpAddr::V6(v6) => {
                let prefix = Ipv6Addr::from_bits(v6.to_bits() & !((1u128 << 64) - 1));
                Self::new(format!("ip:{prefix}/64"))
            }
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The identity set by an authenticating layer, else the peer's address, else
/// `unknown` (a transport without addresses: all such callers share a limit).
pub fn caller_of<T>(req: &Request<T>) -> Caller {
    if let Some(c) = req.extensions().get::<Caller>() {
        return c.clone();
    }
    match req.remote_addr() {
        Some(addr) => Caller::peer(addr.ip()),
        None => Caller::new("unknown"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_identity_set_by_a_layer_wins_over_the_peer_address() {
        let mut req = Request::new(());
        assert_eq!(caller_of(&req).as_str(), "unknown");
        req.extensions_mut().insert(Caller::new("key:acme-backend"));
        assert_eq!(caller_of(&req).as_str(), "key:acme-backend");
    }

    #[test]
    fn a_mapped_ipv4_address_is_the_same_caller_as_the_ipv4_one() {
        let v4: IpAddr = "203.0.113.7".parse().unwrap();
        let mapped: IpAddr = "::ffff:203.0.113.7".parse().unwrap();
        assert_eq!(Caller::peer(v4), Caller::peer(mapped));
        assert_eq!(Caller::peer(v4).as_str(), "ip:203.0.113.7");
    }

    #[test]
    fn an_ipv6_caller_is_its_slash_64() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        let other: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(Caller::peer(a), Caller::peer(b));
        assert_eq!(Caller::peer(a).as_str(), "ip:2001:db8:1:2::/64");
        assert_ne!(Caller::peer(a), Caller::peer(other));
    }
}
