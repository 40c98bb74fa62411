//! `GET /health` and `GET /ready` on the gRPC port, for load balancers and
//! platforms that probe over HTTP/1.1 (Railway probes the port it gives in
//! `PORT`; Kubernetes' `httpGet`). Inside the outer panic guard, a probe is
//! answered before gRPC-Web's translation (which refuses other HTTP/1.1
//! requests), the auth layer (no credential needed: a probe
//! names no session and reveals only which checks fail) and routing; every
//! other request (every gRPC call is a `POST`) goes through untouched.
//! The answers are [`crate::probes::probe`]'s, the same the metrics port serves.
//! Over HTTP/2 a `GET` to these paths is answered the same way.

use std::task::{Context, Poll};

use futures_util::future::Either;
use tonic::body::Body;

use crate::probes::{self, Readiness};

#[derive(Clone)]
pub struct ProbeLayer {
    readiness: Readiness,
}

impl ProbeLayer {
    pub fn new(readiness: Readiness) -> Self {
        Self { readiness }
    }
}

impl<S> tower_layer::Layer<S> for ProbeLayer {
    type Service = ProbeService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ProbeService {
            inner,
            readiness: self.readiness.clone(),
        }
    }
}

#[derive(Clone)]
pub struct ProbeService<S> {
    inner: S,
    readiness: Readiness,
}

/// The HTTP response of a probe's answer (`HEAD` gets the head only).
fn respond(answer: probes::ProbeAnswer, head_only: bool) -> http::Response<Body> {
    let body = if head_only {
        Body::empty()
    } else {
        Body::new(answer.body)
    };
    let mut resp = http::Response::new(body);
    *resp.status_mut() = answer.status;
    let headers = resp.headers_mut();
    headers.insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static(answer.content_type),
    );
    // A probe's answer is true only now.
    headers.insert(
        http::header::CACHE_CONTROL,
        http::HeaderValue::from_static("no-store"),
    );
    resp
}

impl<S, B> tower_service::Service<http::Request<B>> for ProbeService<S>
where
    S: tower_service::Service<http::Request<B>, Response = http::Response<Body>>,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = Either<std::future::Ready<Result<Self::Response, Self::Error>>, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let method = req.method();
        if method == http::Method::GET || method == http::Method::HEAD {
            if let Some(answer) = probes::probe(req.uri().path(), &self.readiness) {
                let head_only = method == http::Method::HEAD;
                return Either::Left(std::future::ready(Ok(respond(answer, head_only))));
            }
        }
        Either::Right(self.inner.call(req))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::convert::Infallible;
    use tower_service::Service;

    /// What the layer wraps: answers every request 200 with `grpc-status: 12`.
    #[derive(Clone)]
    struct Routes;

    impl Service<http::Request<()>> for Routes {
        type Response = http::Response<Body>;
        type Error = Infallible;
        type Future = std::future::Ready<Result<Self::Response, Infallible>>;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, _: http::Request<()>) -> Self::Future {
            let mut resp = http::Response::new(Body::empty());
            resp.headers_mut()
                .insert("grpc-status", http::HeaderValue::from_static("12"));
            std::future::ready(Ok(resp))
        }
    }

    async fn call(
        svc: &mut ProbeService<Routes>,
        method: &str,
        path: &str,
    ) -> http::Response<Body> {
        let req = http::Request::builder()
            .method(method)
            .uri(path)
            .body(())
            .unwrap();
        svc.call(req).await.unwrap()
    }

    #[tokio::test]
    async fn probes_are_answered_and_everything_else_passes_through() {
        let readiness = Readiness::new(true, None);
        let mut svc = tower_layer::Layer::layer(&ProbeLayer::new(readiness.clone()), Routes);
        let health = call(&mut svc, "GET", "/health").await;
        assert_eq!(health.status(), http::StatusCode::OK);
        assert_eq!(health.headers()["content-type"], "application/json");
        assert_eq!(
            call(&mut svc, "GET", "/ready").await.status(),
            http::StatusCode::SERVICE_UNAVAILABLE
        );
        readiness.set_store(true);
        readiness.set_pubsub(true);
        assert_eq!(
            call(&mut svc, "HEAD", "/ready").await.status(),
            http::StatusCode::OK
        );
        for (method, path) in [
            ("POST", "/ready"),
            ("POST", "/synckairos.v1.SyncService/GetSession"),
            ("GET", "/metrics"),
            ("GET", "/grpc.health.v1.Health/Check"),
        ] {
            let resp = call(&mut svc, method, path).await;
            assert_eq!(resp.headers()["grpc-status"], "12", "{method} {path}");
        }
    }
}
