//! `AppError`: what went wrong, in the words the caller sees. The transport
//! maps each variant to one status code (grpc/error.rs); the detail of an
//! infrastructure failure is logged where it happens, never returned. A
//! variant carries what the transport puts in the status details as plain
//! data (the bad field, a retry delay), never a transport type.

use std::time::Duration;

use crate::audit::{AuditError, MAX_PAGE_SIZE};
use crate::engine::RuleError;
use crate::store::StoreError;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AppError {
    /// Bad input. `field` is the request field's path as the engine names it
    /// (`participants[2].participant_id`); the message is `<field>: <reason>`.
    #[error("{field}: {reason}")]
    InvalidArgument { field: String, reason: String },
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
    /// A limit was reached; the caller may retry after `retry_after`.
    #[error("{message}")]
    ResourceExhausted {
        message: String,
        retry_after: Duration,
    },
    #[error("{0}")]
    Unimplemented(String),
    #[error("internal error")]
    Internal,
}

impl AppError {
    /// Bad input in `field` (its path in the request), for `reason`.
    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        AppError::InvalidArgument {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

impl From<RuleError> for AppError {
    fn from(e: RuleError) -> Self {
        match e {
            RuleError::InvalidArgument { field, reason } => {
                AppError::InvalidArgument { field, reason }
            }
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
            AuditError::BadPageToken(reason) => AppError::invalid("page_token", reason),
            AuditError::BadPageSize(got) => AppError::invalid(
                "page_size",
                format!("must be at most {MAX_PAGE_SIZE}, got {got}"),
            ),
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
            StoreError::Full { limit } => AppError::ResourceExhausted {
                message: format!(
                    "this server holds as many sessions as it may (limit {limit}); retry later"
                ),
                retry_after: Duration::from_secs(1),
            },
            StoreError::Unavailable(detail) => {
                tracing::warn!(%detail, "store unavailable");
                AppError::Unavailable("session store unavailable; retry shortly".into())
            }
            StoreError::OutcomeUnknown(detail) => {
                tracing::warn!(%detail, "write outcome unknown");
                AppError::Unavailable(
                    "the session store lost the answer to this change, which may have been \
                     applied: retry with a request_id to apply it at most once"
                        .into(),
                )
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_arguments_keep_their_field_and_message() {
        let rule = RuleError::invalid("participants[2].participant_id", "must not be empty");
        let msg = rule.to_string();
        let e = AppError::from(rule);
        assert_eq!(
            e,
            AppError::invalid("participants[2].participant_id", "must not be empty")
        );
        assert_eq!(e.to_string(), msg);
        // The audit's own messages, unchanged, now with their field.
        for (audit, field) in [
            (AuditError::BadPageToken("not a token".into()), "page_token"),
            (AuditError::BadPageSize(1001), "page_size"),
        ] {
            let msg = audit.to_string();
            let e = AppError::from(audit);
            assert_eq!(e.to_string(), msg);
            assert!(matches!(&e, AppError::InvalidArgument { field: f, .. } if f == field));
        }
    }
}
