//! One async fn per RPC, each a straight line over engine + store + fanout:
//! parse is done (the caller hands in domain values), the store applies the
//! pure engine at its own `now` and commits, the reply is the session and the
//! instant it is computed at. `AppError` is the only error callers see; it
//! knows no tonic, prost, redis or diesel type.

mod error;
pub(crate) mod list;
mod subscribe;
mod watch;

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use uuid::Uuid;

pub use error::AppError;
pub use list::{ListQuery, SessionsPage, StatusFilter};
pub use subscribe::{STREAM_CHANNEL_CAPACITY, StreamItem, SubscribeOptions};
pub use watch::{MAX_WATCHED, Progress, WatchItem, WatchOptions, WatchScope, WatchTarget};

use crate::audit::Audit;
use crate::engine::{
    self, Command, Event, Micros, NewSession, ParticipantId, Request, RequestId, Session,
    SessionId, SessionKey, Tenant,
};
use crate::fanout::Hub;
use crate::store::{self, SessionStore, StoreError};

/// A session and the server instant its computed values refer to.
#[derive(Clone, Debug)]
pub struct Reply {
    pub session: Session,
    pub server_time: Micros,
}

/// The guards every mutation may carry.
#[derive(Clone, Debug, Default)]
pub struct Guards {
    pub expected_version: Option<u64>,
    pub request_id: Option<RequestId>,
}

#[derive(Clone)]
pub struct App {
    store: Arc<dyn SessionStore>,
    hub: Arc<Hub>,
    audit: Option<Audit>,
    shutdown: CancellationToken,
    /// How long a created session may stay PENDING (`SYNCKAIROS_UNSTARTED_TTL`).
    unstarted_ttl: Duration,
    /// How long the Subscribe streams take to end at shutdown, spread out
    /// (subscribe.rs, [`subscribe::end_offset`]).
    stream_end_spread: Duration,
    /// Where a page of ListSessionEvents or ListSessions ends
    /// (`SYNCKAIROS_MAX_PAGE_BYTES`).
    page_bytes: usize,
}

/// One page of a session's audit history.
pub struct HistoryPage {
    pub events: Vec<Event>,
    pub next_page_token: String,
}

/// The name of a session created without one but with a request id: a
/// UUIDv8 of the SHA-256 of tenant and request id, so that a retry of the
/// create names the same session (and finds it: its `request_id` was
/// applied), and two tenants' request ids never meet.
pub fn derived_session_id(tenant: &Tenant, request_id: &str) -> Result<SessionId, AppError> {
    use sha2::Digest as _;
    let digest = sha2::Sha256::new()
        .chain_update(b"synckairos/create\0")
        .chain_update(tenant.as_str().as_bytes())
        .chain_update(b"\0")
        .chain_update(request_id.as_bytes())
        .finalize();
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    // A UUID's text (hex digits and dashes) is a valid session id.
    SessionId::parse("session_id", &Uuid::new_v8(bytes).to_string())
        .map_err(|e| AppError::invalid("session_id", e.to_string()))
}

impl App {
    pub fn new(
        store: Arc<dyn SessionStore>,
        hub: Arc<Hub>,
        audit: Option<Audit>,
        shutdown: CancellationToken,
    ) -> Self {
        Self {
            store,
            hub,
            audit,
            shutdown,
            unstarted_ttl: crate::config::Config::default().unstarted_ttl,
            stream_end_spread: Duration::ZERO,
            page_bytes: crate::audit::DEFAULT_PAGE_BYTES,
        }
    }

    /// Sessions not started within `ttl` of their creation expire.
    pub fn with_unstarted_ttl(mut self, ttl: Duration) -> Self {
        self.unstarted_ttl = ttl;
        self
    }

    /// At shutdown the Subscribe streams end over `spread`, each at its own
    /// moment, not all at once (default: all at once).
    pub fn with_stream_end_spread(mut self, spread: Duration) -> Self {
        self.stream_end_spread = spread;
        self
    }

    /// A page of ListSessionEvents or ListSessions ends once what it holds
    /// reaches `bytes` (at least one item a page).
    pub fn with_page_bytes(mut self, bytes: usize) -> Self {
        self.page_bytes = bytes;
        self
    }

    pub fn store(&self) -> &Arc<dyn SessionStore> {
        &self.store
    }

    fn reply(&self, session: Session) -> Reply {
        Reply {
            session,
            server_time: self.store.now(),
        }
    }

    /// Creates `new` for `tenant` (its `epoch` is replaced by a fresh random one).
    pub async fn create(&self, tenant: Tenant, mut new: NewSession) -> Result<Reply, AppError> {
        let key = SessionKey {
            tenant,
            id: new.id.clone(),
        };
        new.epoch = Uuid::new_v4().simple().to_string();
        new.start_within =
            Some(Micros::try_from(self.unstarted_ttl.as_micros()).unwrap_or(Micros::MAX));
        let request_id = new.request_id.clone();
        match self
            .store
            .create(&key, &|now| engine::create(new.clone(), now))
            .await
        {
            Ok(event) => Ok(self.reply(event.session.clone())),
            // A retried create (same request_id) gets the session it made.
            Err(StoreError::AlreadyExists(existing))
                if request_id
                    .as_ref()
                    .is_some_and(|r| existing.has_applied(r.as_str())) =>
            {
                Ok(self.reply(*existing))
            }
            Err(e) => Err(e.into()),
        }
    }

    pub async fn get(&self, key: SessionKey) -> Result<Reply, AppError> {
        let session = self.store.get(&key).await?;
        Ok(self.reply(session))
    }

    async fn mutate(
        &self,
        key: SessionKey,
        command: Command,
        guards: Guards,
    ) -> Result<Reply, AppError> {
        let request = Request {
            command,
            expected_version: guards.expected_version,
            request_id: guards.request_id,
        };
        let applied = self.store.update(&key, store::apply(request)).await?;
        Ok(self.reply(applied.session))
    }

    pub async fn start(
        &self,
        key: SessionKey,
        first: Option<ParticipantId>,
        g: Guards,
    ) -> Result<Reply, AppError> {
        self.mutate(key, Command::Start { first }, g).await
    }

    pub async fn switch(
        &self,
        key: SessionKey,
        from: Option<ParticipantId>,
        next: Option<ParticipantId>,
        lag_ms: Option<i64>,
        g: Guards,
    ) -> Result<Reply, AppError> {
        self.mutate(key, Command::Switch { from, next, lag_ms }, g)
            .await
    }

    pub async fn undo_switch(&self, key: SessionKey, g: Guards) -> Result<Reply, AppError> {
        self.mutate(key, Command::Undo, g).await
    }

    pub async fn pause(&self, key: SessionKey, g: Guards) -> Result<Reply, AppError> {
        self.mutate(key, Command::Pause, g).await
    }

    pub async fn resume(&self, key: SessionKey, g: Guards) -> Result<Reply, AppError> {
        self.mutate(key, Command::Resume, g).await
    }

    pub async fn complete(&self, key: SessionKey, g: Guards) -> Result<Reply, AppError> {
        self.mutate(key, Command::Complete, g).await
    }

    pub async fn cancel(&self, key: SessionKey, g: Guards) -> Result<Reply, AppError> {
        self.mutate(key, Command::Cancel, g).await
    }

    pub async fn adjust(
        &self,
        key: SessionKey,
        target: engine::AdjustTarget,
        delta_ms: i64,
        g: Guards,
    ) -> Result<Reply, AppError> {
        self.mutate(key, Command::Adjust { target, delta_ms }, g)
            .await
    }

    pub async fn delete(&self, key: SessionKey) -> Result<(), AppError> {
        self.store.delete(&key).await?;
        Ok(())
    }

    pub fn server_time(&self) -> Micros {
        self.store.now()
    }

    /// The session's history from the audit trail (ListSessionEvents).
    pub async fn history(
        &self,
        key: SessionKey,
        page_size: u32,
        page_token: &str,
        after_version: Option<u64>,
    ) -> Result<HistoryPage, AppError> {
        let audit = self.audit.as_ref().ok_or_else(|| {
            AppError::Unimplemented(
                "the audit trail is off on this server (DATABASE_URL is not set)".into(),
            )
        })?;
        let page = audit
            .history(&key, page_size, page_token, after_version, self.page_bytes)
            .await?;
        Ok(HistoryPage {
            events: page.events,
            next_page_token: page.next_page_token,
        })
    }

    /// A page of `tenant`'s sessions, newest first (ListSessions), each made
    /// by `render` at the page's server time with its size in bytes; see
    /// [`list`].
    pub async fn list_sessions<T: Send>(
        &self,
        tenant: Tenant,
        query: ListQuery,
        render: impl Fn(&Session, Micros) -> (T, usize) + Send,
    ) -> Result<SessionsPage<T>, AppError> {
        list::page(self.store.as_ref(), &tenant, query, render, self.page_bytes).await
    }

    /// Opens a Subscribe stream (SPEC §7); see [`subscribe`].
    pub async fn subscribe(
        &self,
        key: SessionKey,
        opts: SubscribeOptions,
    ) -> Result<tokio::sync::mpsc::Receiver<Result<StreamItem, AppError>>, AppError> {
        subscribe::open(
            self.store.clone(),
            &self.hub,
            key,
            opts,
            self.shutdown.clone(),
            self.stream_end_spread,
        )
        .await
    }

    /// Opens a WatchSessions stream over `tenant`'s sessions; see [`watch`].
    pub async fn watch(
        &self,
        tenant: Tenant,
        opts: WatchOptions,
    ) -> Result<tokio::sync::mpsc::Receiver<Result<WatchItem, AppError>>, AppError> {
        watch::open(
            self.store.clone(),
            &self.hub,
            tenant,
            opts,
            self.shutdown.clone(),
            self.stream_end_spread,
        )
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_derived_name_is_a_uuid_of_tenant_and_request_id() {
        let t = |s: &str| Tenant::parse("tenant", s).unwrap();
        let a = derived_session_id(&t("acme"), "r1").unwrap();
        assert_eq!(a, derived_session_id(&t("acme"), "r1").unwrap());
        assert_ne!(a, derived_session_id(&t("acme"), "r2").unwrap());
        assert_ne!(a, derived_session_id(&t("other"), "r1").unwrap());
        let u = uuid::Uuid::parse_str(a.as_str()).unwrap();
        assert_eq!(u.get_version_num(), 8);
    }
}
