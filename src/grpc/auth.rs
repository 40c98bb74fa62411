//! The gRPC edge of [`crate::auth`]: a tower layer every call passes through
//! (inside the panic guard). For each HTTP/2 request it
//! - lets `grpc.health.v1.Health` through untouched (load balancers probe it
//!   without credentials);
//! - reads `authorization: Bearer <credential>` (or, under mutual TLS, the
//!   client certificate's common name) and authenticates it; a caller
//!   without a valid credential gets UNAUTHENTICATED here, and one whose
//!   role or token does not allow the method PERMISSION_DENIED (reflection
//!   needs any valid credential), before the request body is read;
//! - puts the [`Principal`] into the request's extensions, where the
//!   handlers read its tenant (grpc/service.rs), and the [`Caller`] the rate
//!   limits key by: `tenant:<tenant>` for an API key (a tenant's keys share
//!   its limits), `token:<tenant>/<session>/<participant>` for a player token
//!   (so one player's client never spends its game server's budget). In open
//!   mode no caller is set: callers are their peer addresses (grpc/caller.rs).
//! - tells the access log (grpc/observe.rs) who called, when it is on.
//!   The credential itself never reaches a log.

use std::sync::Arc;
use std::task::{Context, Poll};

use futures_util::future::BoxFuture;
use tonic::Status;
use tonic::body::Body;

use super::caller::Caller;
use super::observe::AccessSlot;
use crate::auth::{AuthError, Authenticator, Principal, Rpc};

const SYNC_PREFIX: &str = "/synckairos.v1.SyncService/";
const HEALTH_PREFIX: &str = "/grpc.health.v1.Health/";
const REFLECTION_PREFIXES: [&str; 2] = [
    "/grpc.reflection.v1.ServerReflection/",
    "/grpc.reflection.v1alpha.ServerReflection/",
];

/// Seconds since the Unix epoch by the server's clock (player tokens' `exp`).
pub type NowSecs = Arc<dyn Fn() -> u64 + Send + Sync>;

/// The method a path names; `None` for paths of no known service.
fn rpc_of(path: &str) -> Option<Rpc> {
    if REFLECTION_PREFIXES.iter().any(|p| path.starts_with(p)) {
        return Some(Rpc::Reflection);
    }
    let method = path.strip_prefix(SYNC_PREFIX)?;
    Rpc::ALL
        .into_iter()
        .find(|r| *r != Rpc::Reflection && r.method_name() == method)
}

/// The credential of an `authorization` value: `Bearer <credential>` (the
/// scheme in any case, RFC 9110 §11.1).
fn bearer(value: &http::HeaderValue) -> Result<&str, AuthError> {
    let bad =
        || AuthError::Unauthenticated("authorization: expected \"Bearer <credential>\"".into());
    let v = value.to_str().map_err(|_| bad())?.trim();
    let (scheme, credential) = v.split_once(' ').ok_or_else(bad)?;
    let credential = credential.trim();
    if !scheme.eq_ignore_ascii_case("bearer") || credential.is_empty() {
        return Err(bad());
    }
    Ok(credential)
}

/// Who sent `req`, and whether it may call what it calls.
fn admit<B>(
    auth: &Authenticator,
    now: &NowSecs,
    req: &http::Request<B>,
    rpc: Option<Rpc>,
) -> Result<Principal, AuthError> {
    let credential = req
        .headers()
        .get(http::header::AUTHORIZATION)
        .map(bearer)
        .transpose()?;
    // The certificate is parsed only when it is what names the caller.
    let cn = match credential {
        None if !auth.is_open() => super::client_cert::common_name(req.extensions()),
        _ => None,
    };
    let principal = auth.authenticate(credential, cn.as_deref(), now())?;
    // A path of no known service is left to tonic (UNIMPLEMENTED), once the
    // caller is known to be someone.
    if let Some(rpc) = rpc {
        principal.may_call(rpc)?;
    }
    Ok(principal)
}

pub fn status_of(e: AuthError) -> Status {
    match e {
        AuthError::Unauthenticated(m) => Status::unauthenticated(m),
        AuthError::PermissionDenied(m) => Status::permission_denied(m),
    }
}

/// The caller the rate limits key by (see the module doc).
fn limit_key(p: &Principal) -> Option<Caller> {
    match p {
        Principal::Open => None,
        Principal::Key(k) => Some(Caller::new(k.rate_key.clone())),
        Principal::Token(t) => Some(Caller::new(t.rate_key.clone())),
    }
}

#[derive(Clone)]
pub struct AuthLayer {
    auth: Arc<Authenticator>,
    now: NowSecs,
}

impl AuthLayer {
    pub fn new(auth: Arc<Authenticator>, now: NowSecs) -> Self {
        Self { auth, now }
    }
}

impl<S> tower_layer::Layer<S> for AuthLayer {
    type Service = AuthService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AuthService {
            inner,
            layer: self.clone(),
        }
    }
}

#[derive(Clone)]
pub struct AuthService<S> {
    inner: S,
    layer: AuthLayer,
}

impl<S, B> tower_service::Service<http::Request<B>> for AuthService<S>
where
    S: tower_service::Service<http::Request<B>, Response = http::Response<Body>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    B: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        let path = req.uri().path();
        if path.starts_with(HEALTH_PREFIX) {
            return Box::pin(self.inner.call(req));
        }
        let rpc = rpc_of(path);
        let principal = match admit(&self.layer.auth, &self.layer.now, &req, rpc) {
            Ok(p) => p,
            Err(e) => return Box::pin(std::future::ready(Ok(status_of(e).into_http()))),
        };
        if let Some(caller) = limit_key(&principal) {
            req.extensions_mut().insert(caller);
        }
        if let Some(slot) = req.extensions().get::<AccessSlot>() {
            slot.set(&principal);
        }
        req.extensions_mut().insert(principal);
        Box::pin(self.inner.call(req))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_takes_the_credential_and_refuses_other_shapes() {
        let v = |s: &str| http::HeaderValue::from_str(s).unwrap();
        assert_eq!(bearer(&v("Bearer abc")).unwrap(), "abc");
        assert_eq!(bearer(&v("bearer  abc ")).unwrap(), "abc");
        for bad in ["abc", "Basic abc", "Bearer ", "Bearer"] {
            assert!(bearer(&v(bad)).is_err(), "{bad:?}");
        }
        let binary = http::HeaderValue::from_bytes(b"Bearer \xff").unwrap();
        assert!(bearer(&binary).is_err());
    }

    #[test]
    fn every_path_names_its_rpc() {
        assert_eq!(
            rpc_of("/synckairos.v1.SyncService/SwitchCycle"),
            Some(Rpc::SwitchCycle)
        );
        assert_eq!(
            rpc_of("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"),
            Some(Rpc::Reflection)
        );
        assert_eq!(rpc_of("/synckairos.v1.SyncService/Nope"), None);
        assert_eq!(rpc_of("/other.Service/GetSession"), None);
    }
}
