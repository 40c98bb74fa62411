//! grpc.health.v1.Health and server reflection (v1 and v1alpha), from Rust.

use tokio_stream::StreamExt;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_reflection::pb::{v1, v1alpha};

use crate::helpers::*;

#[tokio::test]
async fn health_reports_serving_for_the_server_and_the_service() {
    let app = spawn_app().await;
    let channel = tonic::transport::Endpoint::from_shared(app.url())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = HealthClient::new(channel);
    for service in ["", "synckairos.v1.SyncService"] {
        let r = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(r.status, ServingStatus::Serving as i32, "{service:?}");
    }
    let r = health
        .check(HealthCheckRequest {
            service: "nope".into(),
        })
        .await;
    assert_code(r, tonic::Code::NotFound);
}

#[tokio::test]
async fn reflection_v1_and_v1alpha_both_list_the_services() {
    let app = spawn_app().await;
    let channel = tonic::transport::Endpoint::from_shared(app.url())
        .unwrap()
        .connect()
        .await
        .unwrap();

    let mut client = v1::server_reflection_client::ServerReflectionClient::new(channel.clone());
    let req = v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(v1::server_reflection_request::MessageRequest::ListServices(
            String::new(),
        )),
    };
    let mut replies = client
        .server_reflection_info(tokio_stream::iter(vec![req]))
        .await
        .unwrap()
        .into_inner();
    let reply = replies.next().await.expect("a reply").unwrap();
    let Some(v1::server_reflection_response::MessageResponse::ListServicesResponse(list)) =
        reply.message_response
    else {
        panic!("unexpected v1 reply");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    for expected in ["synckairos.v1.SyncService", "grpc.health.v1.Health"] {
        assert!(
            names.iter().any(|n| n == expected),
            "v1 reflection: {expected} missing from {names:?}"
        );
    }

    let mut client = v1alpha::server_reflection_client::ServerReflectionClient::new(channel);
    let req = v1alpha::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(
            v1alpha::server_reflection_request::MessageRequest::ListServices(String::new()),
        ),
    };
    let mut replies = client
        .server_reflection_info(tokio_stream::iter(vec![req]))
        .await
        .unwrap()
        .into_inner();
    let reply = replies.next().await.expect("a reply").unwrap();
    let Some(v1alpha::server_reflection_response::MessageResponse::ListServicesResponse(list)) =
        reply.message_response
    else {
        panic!("unexpected v1alpha reply");
    };
    assert!(
        list.service
            .iter()
            .any(|s| s.name == "synckairos.v1.SyncService")
    );
}
