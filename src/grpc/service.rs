//! `synckairos.v1.SyncService` over the app, plus the router that serves it
//! next to `grpc.health.v1.Health` and reflection v1 + v1alpha (grpcurl 1.8
//! speaks only v1alpha). Each RPC: a span whose `session_id` is recorded
//! only once the id parsed (a raw id never reaches logs or traces), parse,
//! one app call, convert.

use std::pin::Pin;

use tokio_stream::{Stream, StreamExt, wrappers::ReceiverStream};
use tonic::{Request, Response, Status};
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use std::sync::Arc;

use super::caller::caller_of;
use super::convert;
use super::pb::{
    self,
    sync_service_server::{SyncService, SyncServiceServer},
};
use super::rate::{RateLimits, Spend};
use crate::app::App;
use crate::config::Config;

pub struct GrpcService {
    app: App,
    limits: Arc<RateLimits>,
}

impl GrpcService {
    /// Spends one `spend` of the caller's rate limit, before anything else.
    fn spend<T>(&self, spend: Spend, req: &Request<T>) -> Result<(), Status> {
        Ok(self.limits.check(spend, &caller_of(req))?)
    }
}

type Reply<T> = Result<Response<T>, Status>;
type EventStream = Pin<Box<dyn Stream<Item = Result<pb::SessionEvent, Status>> + Send>>;

fn session_reply(r: crate::app::Reply) -> Reply<pb::Session> {
    Ok(Response::new(convert::session(&r.session, r.server_time)))
}

fn record_session_id(id: &str) {
    tracing::Span::current().record("session_id", id);
}

#[tonic::async_trait]
impl SyncService for GrpcService {
    #[tracing::instrument(skip_all, fields(session_id))]
    async fn create_session(&self, req: Request<pb::CreateSessionRequest>) -> Reply<pb::Session> {
        self.spend(Spend::Create, &req)?;
        let new = convert::create_request(req.into_inner())?;
        record_session_id(new.id.as_str());
        session_reply(self.app.create(new).await?)
    }

    #[tracing::instrument(skip_all, fields(session_id))]
    async fn get_session(&self, req: Request<pb::GetSessionRequest>) -> Reply<pb::Session> {
        let id = convert::session_id(&req.get_ref().session_id)?;
        record_session_id(id.as_str());
        session_reply(self.app.get(id).await?)
    }

    #[tracing::instrument(skip_all, fields(session_id))]
    async fn start_session(&self, req: Request<pb::StartSessionRequest>) -> Reply<pb::Session> {
        self.spend(Spend::Mutation, &req)?;
        let r = req.into_inner();
        let id = convert::session_id(&r.session_id)?;
        record_session_id(id.as_str());
        let first = convert::start_first(&r)?;
        let guards = convert::guards(r.expected_version, &r.request_id)?;
        session_reply(self.app.start(id, first, guards).await?)
    }

    #[tracing::instrument(skip_all, fields(session_id))]
    async fn switch_cycle(&self, req: Request<pb::SwitchCycleRequest>) -> Reply<pb::Session> {
        self.spend(Spend::Mutation, &req)?;
        let r = req.into_inner();
        let id = convert::session_id(&r.session_id)?;
        record_session_id(id.as_str());
        let (from, next) = convert::switch_args(&r)?;
        let guards = convert::guards(r.expected_version, &r.request_id)?;
        session_reply(self.app.switch(id, from, next, guards).await?)
    }

    #[tracing::instrument(skip_all, fields(session_id))]
    async fn pause_session(&self, req: Request<pb::PauseSessionRequest>) -> Reply<pb::Session> {
        self.spend(Spend::Mutation, &req)?;
        let r = req.into_inner();
        let id = convert::session_id(&r.session_id)?;
        record_session_id(id.as_str());
        session_reply(
            self.app
                .pause(id, convert::guards(r.expected_version, &r.request_id)?)
                .await?,
        )
    }

    #[tracing::instrument(skip_all, fields(session_id))]
    async fn resume_session(&self, req: Request<pb::ResumeSessionRequest>) -> Reply<pb::Session> {
        self.spend(Spend::Mutation, &req)?;
        let r = req.into_inner();
        let id = convert::session_id(&r.session_id)?;
        record_session_id(id.as_str());
        session_reply(
            self.app
                .resume(id, convert::guards(r.expected_version, &r.request_id)?)
                .await?,
        )
    }

    #[tracing::instrument(skip_all, fields(session_id))]
    async fn complete_session(
        &self,
        req: Request<pb::CompleteSessionRequest>,
    ) -> Reply<pb::Session> {
        self.spend(Spend::Mutation, &req)?;
        let r = req.into_inner();
        let id = convert::session_id(&r.session_id)?;
        record_session_id(id.as_str());
        session_reply(
            self.app
                .complete(id, convert::guards(r.expected_version, &r.request_id)?)
                .await?,
        )
    }

    #[tracing::instrument(skip_all, fields(session_id))]
    async fn cancel_session(&self, req: Request<pb::CancelSessionRequest>) -> Reply<pb::Session> {
        self.spend(Spend::Mutation, &req)?;
        let r = req.into_inner();
        let id = convert::session_id(&r.session_id)?;
        record_session_id(id.as_str());
        session_reply(
            self.app
                .cancel(id, convert::guards(r.expected_version, &r.request_id)?)
                .await?,
        )
    }

    #[tracing::instrument(skip_all, fields(session_id))]
    async fn adjust_time(&self, req: Request<pb::AdjustTimeRequest>) -> Reply<pb::Session> {
        self.spend(Spend::Mutation, &req)?;
        let r = req.into_inner();
        let id = convert::session_id(&r.session_id)?;
        record_session_id(id.as_str());
        let target = convert::adjust_target(&r)?;
        let guards = convert::guards(r.expected_version, &r.request_id)?;
        session_reply(self.app.adjust(id, target, r.delta_ms, guards).await?)
    }

    #[tracing::instrument(skip_all, fields(session_id))]
    async fn delete_session(&self, req: Request<pb::DeleteSessionRequest>) -> Reply<()> {
        self.spend(Spend::Mutation, &req)?;
        let id = convert::session_id(&req.get_ref().session_id)?;
        record_session_id(id.as_str());
        self.app.delete(id).await?;
        Ok(Response::new(()))
    }

    async fn get_server_time(
        &self,
        _req: Request<pb::GetServerTimeRequest>,
    ) -> Reply<pb::ServerTime> {
        Ok(Response::new(pb::ServerTime {
            server_time: Some(convert::timestamp(self.app.server_time())),
        }))
    }

    type SubscribeStream = EventStream;

    #[tracing::instrument(skip_all, fields(session_id))]
    async fn subscribe(&self, req: Request<pb::SubscribeRequest>) -> Reply<Self::SubscribeStream> {
        let r = req.into_inner();
        let id = convert::session_id(&r.session_id)?;
        record_session_id(id.as_str());
        let opts = crate::app::SubscribeOptions {
            from_version: r.from_version,
            epoch: convert::epoch(r.epoch)?,
            strict: r.strict,
            heartbeat_ms: r.heartbeat_ms,
        };
        let rx = self.app.subscribe(id, opts).await?;
        let stream = ReceiverStream::new(rx)
            .map(|item| item.map(|i| convert::stream_item(&i)).map_err(Status::from));
        Ok(Response::new(Box::pin(stream)))
    }

    #[tracing::instrument(skip_all, fields(session_id))]
    async fn list_session_events(
        &self,
        req: Request<pb::ListSessionEventsRequest>,
    ) -> Reply<pb::ListSessionEventsResponse> {
        let r = req.into_inner();
        let id = convert::session_id(&r.session_id)?;
        record_session_id(id.as_str());
        let page_token = convert::page_token(r.page_token)?;
        let page = self
            .app
            .history(id, r.page_size, &page_token, r.after_version)
            .await?;
        Ok(Response::new(pb::ListSessionEventsResponse {
            events: page.events.iter().map(convert::event).collect(),
            next_page_token: page.next_page_token,
        }))
    }
}

/// Sets the health of both the overall server ("") and `synckairos.v1.SyncService`.
#[derive(Clone)]
pub struct HealthControl {
    reporter: HealthReporter,
}

const SERVICE_NAME: &str = "synckairos.v1.SyncService";

impl HealthControl {
    pub async fn set(&self, serving: bool) {
        let status = if serving {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        };
        self.reporter.set_service_status("", status).await;
        self.reporter.set_service_status(SERVICE_NAME, status).await;
    }
}

/// The whole gRPC surface, ready to serve, with the transport limits of
/// `config` (each documented on its `Config` field):
/// - `SETTINGS_MAX_CONCURRENT_STREAMS` per connection;
/// - HTTP/2 keepalive PINGs, and the connection closed when one goes unanswered;
/// - a maximum connection age (GOAWAY), and optionally a grace after which
///   the connection is cut (tonic 0.14: with a grace there is no GOAWAY
///   first, see `Config::max_connection_age_grace`);
/// - request and reply message size limits on `SyncService` (health and
///   reflection keep tonic's own: 4 MiB decoded, unbounded encoded; their
///   messages are tiny);
/// - per-caller rate limits on creates and mutations (grpc/rate.rs);
/// - every call inside the panic guard (grpc/panic.rs).
///
/// TCP keepalive is set on the listener's incoming stream in startup.rs:
/// tonic ignores `Server::tcp_keepalive` with `serve_with_incoming`. Not set
/// here on purpose: `concurrency_limit_per_connection` (a tower limit on
/// calls whose response head is pending, so it bounds no stream and only
/// queues unary calls behind each other) and `timeout` (it would also cut a
/// Subscribe before its first message when the store is slow; the store
/// already fails its calls within ~250 ms).
pub fn router(
    app: App,
    config: &Config,
) -> anyhow::Result<(
    tonic::transport::server::Router<tower_layer::Stack<super::CatchPanic, tower_layer::Identity>>,
    HealthControl,
)> {
    let (reporter, health_service) = tonic_health::server::health_reporter();
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            // google.rpc.BadRequest and RetryInfo, so that grpcurl can print
            // the status details (grpc/error.rs) instead of raw bytes.
            .register_encoded_file_descriptor_set(tonic_types::pb::FILE_DESCRIPTOR_SET)
    };
    let mut server = tonic::transport::Server::builder()
        .layer(super::catch_panic())
        .max_concurrent_streams(config.max_streams_per_connection)
        .http2_keepalive_interval(Some(config.http2_keepalive_interval))
        .http2_keepalive_timeout(Some(config.http2_keepalive_timeout));
    if let Some(age) = config.max_connection_age {
        server = server.max_connection_age(age);
        if let Some(grace) = config.max_connection_age_grace {
            server = server.max_connection_age_grace(grace);
        }
    }
    let limits = RateLimits::new(config.create_rate, config.mutation_rate);
    let sync = SyncServiceServer::new(GrpcService { app, limits })
        .max_decoding_message_size(config.max_request_bytes)
        .max_encoding_message_size(config.max_response_bytes);
    let router = server
        .add_service(health_service)
        .add_service(reflection().build_v1()?)
        .add_service(reflection().build_v1alpha()?)
        .add_service(sync);
    Ok((router, HealthControl { reporter }))
}
