//! `AppError`: what went wrong, in the words the caller sees. The transport
//! maps each variant to one status code (grpc/error.rs); the detail of an
//! infrastructure failure is logged where it happens, never returned.

use crate::audit::AuditError;
use crate::engine::RuleError;
use crate::store::StoreError;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AppError {
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    AlreadyExists(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0}")]
    Aborted(String),
    #[error("{0}")]
    OutOfRange(String),
    #[error("{0}")]
    Unavailable(String),
    /// A limit of this server was reached (e.g. its open Subscribe streams).
    #[error("{0}")]
    ResourceExhausted(String),
    #[error("{0}")]
    Unimplemented(String),
    #[error("internal error")]
    Internal,
}

impl From<RuleError> for AppError {
    fn from(e: RuleError) -> Self {
        match e {
            RuleError::InvalidArgument { .. } => AppError::InvalidArgument(e.to_string()),
            RuleError::FailedPrecondition(m) => AppError::FailedPrecondition(m),
            RuleError::VersionMismatch { .. } => AppError::Aborted(e.to_string()),
            RuleError::Unimplemented(m) => AppError::Unimplemented(m),
            // Only the timers ask for a timeout; it never reaches a caller.
            RuleError::NotDue => AppError::FailedPrecondition(e.to_string()),
        }
    }
}

impl From<AuditError> for AppError {
    fn from(e: AuditError) -> Self {
        match e {
            AuditError::BadPageToken(_) | AuditError::BadPageSize(_) => {
                AppError::InvalidArgument(e.to_string())
            }
            AuditError::NotFound => AppError::NotFound(e.to_string()),
            AuditError::Db(detail) => {
                tracing::warn!(%detail, "audit database unavailable");
                AppError::Unavailable("the audit trail is unavailable; retry shortly".into())
            }
        }
    }
}

impl From<StoreError> for AppError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound => AppError::NotFound("session not found".into()),
            StoreError::AlreadyExists(s) => {
                AppError::AlreadyExists(format!("session {:?} already exists", s.id.as_str()))
            }
            StoreError::Rule(r) => r.into(),
            StoreError::Conflict => {
                AppError::Aborted("too many concurrent writes to this session; retry".into())
            }
            StoreError::Unavailable(detail) => {
                tracing::warn!(%detail, "store unavailable");
                AppError::Unavailable("session store unavailable; retry shortly".into())
            }
        }
    }
}
