//! The one table from `AppError` to a gRPC status code (SPEC §6 errors).
//! Messages are short and stable; causes were logged where they happened.

use tonic::{Code, Status};

use crate::app::AppError;

impl From<AppError> for Status {
    fn from(e: AppError) -> Self {
        let code = match &e {
            AppError::InvalidArgument(_) => Code::InvalidArgument,
            AppError::NotFound(_) => Code::NotFound,
            AppError::AlreadyExists(_) => Code::AlreadyExists,
            AppError::FailedPrecondition(_) => Code::FailedPrecondition,
            AppError::Aborted(_) => Code::Aborted,
            AppError::OutOfRange(_) => Code::OutOfRange,
            AppError::Unavailable(_) => Code::Unavailable,
            AppError::ResourceExhausted(_) => Code::ResourceExhausted,
            AppError::Unimplemented(_) => Code::Unimplemented,
            AppError::Internal => Code::Internal,
        };
        Status::new(code, e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_variant_has_its_code_and_keeps_its_message() {
        let cases = [
            (
                AppError::InvalidArgument("mode: is required".into()),
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
                AppError::ResourceExhausted("x".into()),
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
}
