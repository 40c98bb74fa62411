//! Who is calling and what it may touch. Knows no tonic: the gRPC edge hands
//! in what the call carried (`authorization: Bearer <credential>`, a client
//! certificate's common name) and gets a [`Principal`], or an [`AuthError`]
//! (UNAUTHENTICATED or PERMISSION_DENIED).
//!
//! - **Open mode** (no keys configured): every caller is tenant `default`
//!   with role `admin`.
//! - **API keys** (keys.rs): looked up by the SHA-256 of the credential, so
//!   no secret is compared character by character; or by a client
//!   certificate's CN, which is a key's `id`.
//! - **Player tokens** (token.rs): a JWT for one participant of one session.
//!
//! The rights (SPEC's role table, issue 13): `admin` every RPC of its
//! tenant; `play` all but `DeleteSession`; `read` `GetSession`, `Subscribe`,
//! `ListSessionEvents`, `ListSessions`, `WatchSessions`, `GetServerTime`
//! (the reads); a `watch` token `GetSession`,
//! `Subscribe`, `GetServerTime` on its session; a `play` token those and
//! `SwitchCycle` as its participant. A session of another tenant is not
//! refused here: it is looked up under the caller's tenant, where it does not
//! exist (NOT_FOUND, exactly as a missing id).

pub mod cli;
pub mod keys;
pub mod source;
pub mod token;

use std::sync::Arc;

pub use keys::{ApiKey, Keys, TenantLimits};
pub use source::{Authenticator, KeySource};

use crate::engine::{ParticipantId, SessionId, Tenant};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Admin,
    Play,
    Read,
}

impl Role {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "admin" => Some(Role::Admin),
            "play" => Some(Role::Play),
            "read" => Some(Role::Read),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Play => "play",
            Role::Read => "read",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    Watch,
    Play,
}

/// The calls rights are given for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rpc {
    CreateSession,
    GetSession,
    StartSession,
    SwitchCycle,
    PauseSession,
    ResumeSession,
    CompleteSession,
    CancelSession,
    AdjustTime,
    DeleteSession,
    GetServerTime,
    Subscribe,
    ListSessionEvents,
    UndoSwitch,
    ListSessions,
    WatchSessions,
    /// Server reflection: any valid credential.
    Reflection,
}

impl Rpc {
    /// Every call, in the proto's order.
    pub const ALL: [Rpc; 17] = [
        Rpc::CreateSession,
        Rpc::GetSession,
        Rpc::StartSession,
        Rpc::SwitchCycle,
        Rpc::PauseSession,
        Rpc::ResumeSession,
        Rpc::CompleteSession,
        Rpc::CancelSession,
        Rpc::AdjustTime,
        Rpc::DeleteSession,
        Rpc::GetServerTime,
        Rpc::Subscribe,
        Rpc::ListSessionEvents,
        Rpc::UndoSwitch,
        Rpc::ListSessions,
        Rpc::WatchSessions,
        Rpc::Reflection,
    ];

    /// The method's name in `synckairos.v1.SyncService` (reflection:
    /// `ServerReflectionInfo`, of either reflection service).
    pub fn method_name(self) -> &'static str {
        match self {
            Rpc::CreateSession => "CreateSession",
            Rpc::GetSession => "GetSession",
            Rpc::StartSession => "StartSession",
            Rpc::SwitchCycle => "SwitchCycle",
            Rpc::PauseSession => "PauseSession",
            Rpc::ResumeSession => "ResumeSession",
            Rpc::CompleteSession => "CompleteSession",
            Rpc::CancelSession => "CancelSession",
            Rpc::AdjustTime => "AdjustTime",
            Rpc::DeleteSession => "DeleteSession",
            Rpc::GetServerTime => "GetServerTime",
            Rpc::Subscribe => "Subscribe",
            Rpc::ListSessionEvents => "ListSessionEvents",
            Rpc::UndoSwitch => "UndoSwitch",
            Rpc::ListSessions => "ListSessions",
            Rpc::WatchSessions => "WatchSessions",
            Rpc::Reflection => "ServerReflectionInfo",
        }
    }

    fn read_only(self) -> bool {
        matches!(
            self,
            Rpc::GetSession
                | Rpc::Subscribe
                | Rpc::ListSessionEvents
                | Rpc::ListSessions
                | Rpc::WatchSessions
                | Rpc::GetServerTime
                | Rpc::Reflection
        )
    }

    fn watch(self) -> bool {
        matches!(
            self,
            Rpc::GetSession | Rpc::Subscribe | Rpc::GetServerTime | Rpc::Reflection
        )
    }
}

/// A verified player token's rights.
#[derive(Clone, Debug)]
pub struct PlayerToken {
    pub kid: Arc<str>,
    pub tenant: Tenant,
    pub session: SessionId,
    pub scope: Scope,
    pub participant: Option<ParticipantId>,
    /// `exp`, in Unix seconds.
    pub expires: u64,
    /// What the rate limits key this player by:
    /// `token:<tenant>/<session>/<participant or ->`.
    pub rate_key: Arc<str>,
}

/// An authenticated caller.
#[derive(Clone, Debug)]
pub enum Principal {
    /// No keys are configured: tenant `default`, role `admin`.
    Open,
    Key(Arc<ApiKey>),
    /// Shared with the verified-token cache (source.rs): cheap to clone.
    Token(Arc<PlayerToken>),
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("{0}")]
    Unauthenticated(String),
    #[error("{0}")]
    PermissionDenied(String),
}

impl Principal {
    pub fn tenant(&self) -> Tenant {
        match self {
            Principal::Open => Tenant::default_tenant(),
            Principal::Key(k) => k.tenant.clone(),
            Principal::Token(t) => t.tenant.clone(),
        }
    }

    /// The tenant's name, without a copy.
    pub fn tenant_str(&self) -> &str {
        match self {
            Principal::Open => "default",
            Principal::Key(k) => k.tenant.as_str(),
            Principal::Token(t) => t.tenant.as_str(),
        }
    }

    /// What logs and traces name the caller by (never a secret): `open`,
    /// `key:<id>`, `token:<kid>`.
    pub fn label(&self) -> String {
        match self {
            Principal::Open => "open".into(),
            Principal::Key(k) => format!("key:{}", k.id),
            Principal::Token(t) => format!("token:{}", t.kid),
        }
    }

    /// Whether the caller may make `rpc` at all (before its request is read).
    pub fn may_call(&self, rpc: Rpc) -> Result<(), AuthError> {
        let allowed = match self {
            Principal::Open => true,
            Principal::Key(k) => match k.role {
                Role::Admin => true,
                Role::Play => rpc != Rpc::DeleteSession,
                Role::Read => rpc.read_only(),
            },
            Principal::Token(t) => {
                rpc.watch() || (t.scope == Scope::Play && rpc == Rpc::SwitchCycle)
            }
        };
        if allowed {
            return Ok(());
        }
        let who = match self {
            Principal::Key(k) => format!("role {}", k.role.as_str()),
            Principal::Token(t) if t.scope == Scope::Play => "a play token".into(),
            _ => "a watch token".into(),
        };
        Err(AuthError::PermissionDenied(format!(
            "{who} may not call {rpc:?}"
        )))
    }

    /// Whether the caller may touch `session` (of its own tenant): a token
    /// only its own.
    pub fn may_touch(&self, session: &SessionId) -> Result<(), AuthError> {
        match self {
            Principal::Token(t) if &t.session != session => Err(AuthError::PermissionDenied(
                "this player token is for another session".into(),
            )),
            _ => Ok(()),
        }
    }

    /// The participant a `play` token switches as: `from` is set to it, and
    /// another `from` is refused. Other callers pass `from` through.
    pub fn switch_from(
        &self,
        from: Option<ParticipantId>,
    ) -> Result<Option<ParticipantId>, AuthError> {
        let Principal::Token(t) = self else {
            return Ok(from);
        };
        let Some(me) = &t.participant else {
            return Ok(from);
        };
        match from {
            Some(f) if &f != me => Err(AuthError::PermissionDenied(
                "this player token switches only as its own participant (sub)".into(),
            )),
            _ => Ok(Some(me.clone())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(role: Role) -> Principal {
        Principal::Key(Arc::new(ApiKey {
            id: "k".into(),
            tenant: Tenant::parse("t", "acme").unwrap(),
            role,
            rate_key: "tenant:acme".into(),
        }))
    }

    fn token(scope: Scope) -> Principal {
        Principal::Token(Arc::new(PlayerToken {
            kid: "kid".into(),
            tenant: Tenant::parse("t", "acme").unwrap(),
            session: SessionId::parse("s", "g1").unwrap(),
            scope,
            participant: Some(ParticipantId::parse("p", "white").unwrap()),
            expires: u64::MAX,
            rate_key: "token:acme/g1/white".into(),
        }))
    }

    #[test]
    fn roles_and_scopes_allow_what_the_table_says() {
        use Rpc::*;
        let all = Rpc::ALL;
        let allowed = |p: &Principal| -> Vec<Rpc> {
            all.iter()
                .copied()
                .filter(|r| p.may_call(*r).is_ok())
                .collect()
        };
        assert_eq!(allowed(&Principal::Open), all);
        assert_eq!(allowed(&key(Role::Admin)), all);
        assert_eq!(
            allowed(&key(Role::Play)),
            all.iter()
                .copied()
                .filter(|r| *r != DeleteSession)
                .collect::<Vec<_>>()
        );
        assert_eq!(
            allowed(&key(Role::Read)),
            [
                GetSession,
                GetServerTime,
                Subscribe,
                ListSessionEvents,
                ListSessions,
                WatchSessions,
                Reflection
            ]
        );
        assert_eq!(
            allowed(&token(Scope::Watch)),
            [GetSession, GetServerTime, Subscribe, Reflection]
        );
        assert_eq!(
            allowed(&token(Scope::Play)),
            [
                GetSession,
                SwitchCycle,
                GetServerTime,
                Subscribe,
                Reflection
            ]
        );
    }

    #[test]
    fn a_play_token_switches_only_as_its_participant_on_its_session() {
        let p = token(Scope::Play);
        let white = ParticipantId::parse("p", "white").unwrap();
        let black = ParticipantId::parse("p", "black").unwrap();
        assert_eq!(p.switch_from(None).unwrap(), Some(white.clone()));
        assert_eq!(p.switch_from(Some(white.clone())).unwrap(), Some(white));
        assert!(matches!(
            p.switch_from(Some(black.clone())),
            Err(AuthError::PermissionDenied(_))
        ));
        assert_eq!(
            key(Role::Play).switch_from(Some(black.clone())).unwrap(),
            Some(black)
        );
        assert!(p.may_touch(&SessionId::parse("s", "g1").unwrap()).is_ok());
        assert!(p.may_touch(&SessionId::parse("s", "g2").unwrap()).is_err());
        assert!(
            key(Role::Read)
                .may_touch(&SessionId::parse("s", "g2").unwrap())
                .is_ok()
        );
    }
}
