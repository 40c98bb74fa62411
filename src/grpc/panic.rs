//! Panics never cost a connection: a panic in a handler (a bug: nothing a
//! client sends should cause one) ends that one call with `INTERNAL
//! "internal error"`, a trailers-only gRPC response, and the connection and
//! its other calls go on. The panic itself is logged once, with its message
//! and location, by the panic hook `telemetry::init` installs; the message
//! never reaches the client.
//!
//! A panic inside a `Subscribe` stream's producer task ends that task, and so
//! that stream (the client sees it end with an error); a panic before the
//! first message of any call is caught here.

use std::any::Any;

use tonic::Status;
use tonic::body::Body;
use tower_http::catch_panic::CatchPanicLayer;

/// What a panic turns into.
type OnPanic = fn(Box<dyn Any + Send + 'static>) -> http::Response<Body>;

/// The layer every service of the server runs inside.
pub type CatchPanic = CatchPanicLayer<OnPanic>;

pub fn catch_panic() -> CatchPanic {
    CatchPanicLayer::custom(internal as OnPanic)
}

fn internal(_panic: Box<dyn Any + Send + 'static>) -> http::Response<Body> {
    Status::internal("internal error").into_http()
}

/// The text of a panic's payload (`panic!("...")` carries a `&str` or a `String`).
pub fn panic_message(payload: &(dyn Any + Send)) -> &str {
    if let Some(s) = payload.downcast_ref::<&str>() {
        s
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s
    } else {
        "(a payload that is not text)"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_is_an_internal_trailers_only_response_without_its_message() {
        let resp = internal(Box::new("secret detail"));
        assert_eq!(resp.status(), http::StatusCode::OK);
        let h = resp.headers();
        assert_eq!(h["content-type"], "application/grpc");
        assert_eq!(h["grpc-status"], "13");
        assert_eq!(h["grpc-message"], "internal%20error");
    }

    #[test]
    fn panic_messages_are_read_from_str_and_string_payloads() {
        assert_eq!(panic_message(&"a"), "a");
        assert_eq!(panic_message(&String::from("b")), "b");
        assert_eq!(panic_message(&7u32), "(a payload that is not text)");
    }
}
