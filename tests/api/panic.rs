//! Issue 12: a panic in a handler costs only its call. The server wraps every
//! service in `synckairos::grpc::catch_panic()` (grpc/service.rs, `router`);
//! this test serves a health service that panics on one request inside that
//! same layer, since nothing a client sends to SyncKairos itself should make
//! it panic.

use std::net::SocketAddr;
use std::time::Duration;

use tokio_stream::wrappers::TcpListenerStream;
use tonic::transport::{Endpoint, Server};
use tonic::{Code, Request, Response, Status};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::health_server::{Health, HealthServer};
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};

/// Answers SERVING, but panics when asked about the service `panic`.
struct PanicsOnRequest;

#[tonic::async_trait]
impl Health for PanicsOnRequest {
    async fn check(
        &self,
        req: Request<HealthCheckRequest>,
    ) -> Result<Response<HealthCheckResponse>, Status> {
        if req.get_ref().service == "panic" {
            panic!("a bug in a handler");
        }
        Ok(Response::new(HealthCheckResponse {
            status: ServingStatus::Serving as i32,
        }))
    }

    type WatchStream = tokio_stream::Empty<Result<HealthCheckResponse, Status>>;

    async fn watch(
        &self,
        _req: Request<HealthCheckRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        panic!("a bug in a streaming handler");
    }
}

async fn serve_with_the_panic_guard() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(
        Server::builder()
            .layer(synckairos::grpc::catch_panic())
            .add_service(HealthServer::new(PanicsOnRequest))
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );
    addr
}

fn ask(service: &str) -> HealthCheckRequest {
    HealthCheckRequest {
        service: service.into(),
    }
}

#[tokio::test]
async fn a_panicking_handler_answers_internal_and_the_connection_goes_on() {
    let addr = serve_with_the_panic_guard().await;
    let channel = Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .unwrap();
    let mut client = HealthClient::new(channel);
    client
        .check(ask(""))
        .await
        .expect("a call before the panic");
    for _ in 0..3 {
        let status = client.check(ask("panic")).await.unwrap_err();
        assert_eq!(status.code(), Code::Internal, "{status:?}");
        assert_eq!(
            status.message(),
            "internal error",
            "the panic text stays inside"
        );
        // The same connection serves the next call.
        client.check(ask("")).await.expect("a call after the panic");
    }
    let status = client.watch(ask("")).await.unwrap_err();
    assert_eq!(status.code(), Code::Internal, "{status:?}");
    client
        .check(ask(""))
        .await
        .expect("a call after a streaming handler's panic");
}
