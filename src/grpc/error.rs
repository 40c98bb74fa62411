//! The one table from `AppError` to a gRPC status (SPEC §6 errors).
//! Messages are short and stable; causes were logged where they happened.
//!
//! Two codes also carry standard details (`google.rpc.*` in
//! `grpc-status-details-bin`, via tonic-types), so a generated client in any
//! language reads them without parsing the message:
//! `INVALID_ARGUMENT` -> `BadRequest` with one field violation (`field` = the
//! request field's path, e.g. `participants[2].participant_id`; `description`
//! = the reason, the message without its `<field>: ` prefix);
//! `RESOURCE_EXHAUSTED` -> `RetryInfo` (`retry_delay` = when to try again).

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::app::AppError;

impl From<AppError> for Status {
    fn from(e: AppError) -> Self {
        let message = e.to_string();
        let (code, details) = match e {
            AppError::InvalidArgument { field, reason } => (
                Code::InvalidArgument,
                Some(ErrorDetails::with_bad_request_violation(field, reason)),
            ),
            AppError::ResourceExhausted { retry_after, .. } => (
                Code::ResourceExhausted,
                Some(ErrorDetails::with_retry_info(Some(retry_after))),
            ),
            AppError::NotFound(_) => (Code::NotFound, None),
            AppError::AlreadyExists(_) => (Code::AlreadyExists, None),
            AppError::FailedPrecondition(_) => (Code::FailedPrecondition, None),
            AppError::Aborted(_) => (Code::Aborted, None),
            AppError::OutOfRange(_) => (Code::OutOfRange, None),
            AppError::Unavailable(_) => (Code::Unavailable, None),
            AppError::Unimplemented(_) => (Code::Unimplemented, None),
            AppError::Internal => (Code::Internal, None),
        };
        match details {
            Some(details) => Status::with_error_details(code, message, details),
            None => Status::new(code, message),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn every_variant_has_its_code_and_keeps_its_message() {
        let cases = [
            (
                AppError::invalid("mode", "is required"),
                Code::InvalidArgument,
            ),
            (AppError::NotFound("x".into()), Code::NotFound),
            (AppError::AlreadyExists("x".into()), Code::AlreadyExists),
            (
                AppError::FailedPrecondition("x".into()),
                Code::FailedPrecondition,
            ),
            (AppError::Aborted("x".into()), Code::Aborted),
            (AppError::OutOfRange("x".into()), Code::OutOfRange),
            (AppError::Unavailable("x".into()), Code::Unavailable),
            (
                AppError::ResourceExhausted {
                    message: "x".into(),
                    retry_after: Duration::from_millis(1),
                },
                Code::ResourceExhausted,
            ),
            (AppError::Unimplemented("x".into()), Code::Unimplemented),
            (AppError::Internal, Code::Internal),
        ];
        for (e, code) in cases {
            let msg = e.to_string();
            let status = Status::from(e);
            assert_eq!(status.code(), code);
            assert_eq!(status.message(), msg);
        }
    }

    #[test]
    fn invalid_argument_names_its_field_in_a_bad_request() {
        let status = Status::from(AppError::invalid(
            "participants[2].participant_id",
            "must not be empty",
        ));
        assert_eq!(status.code(), Code::InvalidArgument);
        assert_eq!(
            status.message(),
            "participants[2].participant_id: must not be empty"
        );
        let bad = status.get_details_bad_request().expect("a BadRequest");
        assert_eq!(bad.field_violations.len(), 1);
        assert_eq!(
            bad.field_violations[0].field,
            "participants[2].participant_id"
        );
        assert_eq!(bad.field_violations[0].description, "must not be empty");
        assert!(status.get_details_retry_info().is_none());
    }

    #[test]
    fn resource_exhausted_says_when_to_retry_in_a_retry_info() {
        let status = Status::from(AppError::ResourceExhausted {
            message: "too many mutations from this caller; retry later".into(),
            retry_after: Duration::from_millis(1_250),
        });
        assert_eq!(status.code(), Code::ResourceExhausted);
        assert_eq!(
            status.message(),
            "too many mutations from this caller; retry later"
        );
        let retry = status.get_details_retry_info().expect("a RetryInfo");
        assert_eq!(retry.retry_delay, Some(Duration::from_millis(1_250)));
        assert!(status.get_details_bad_request().is_none());
    }

    #[test]
    fn other_codes_carry_no_details() {
        for e in [
            AppError::NotFound("session not found".into()),
            AppError::Unavailable("x".into()),
            AppError::Internal,
        ] {
            assert!(Status::from(e).details().is_empty());
        }
    }
}
