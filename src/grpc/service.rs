//! `synckairos.v1.SyncService` over the app, plus the router that serves it
//! next to `grpc.health.v1.Health` and reflection v1 + v1alpha (grpcurl 1.8
//! speaks only v1alpha). Each RPC: a span naming the caller and its tenant
//! (never a credential) and the `session_id` once it parsed (a raw id never
//! reaches logs or traces); the caller's rate limit; parse; the session
//! looked up under the caller's tenant (so another tenant's session is
//! NOT_FOUND, the same answer by the same path as a missing one); one app
//! call; convert. Who the caller is and whether it may call the method at
//! all was settled before, by the auth layer (grpc/auth.rs).

use std::pin::Pin;

use tokio_stream::{Stream, StreamExt, wrappers::ReceiverStream};
use tonic::{Request, Response, Status};
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use std::sync::Arc;

use super::auth::{AuthLayer, status_of};
use super::caller::caller_of;
use super::convert;
use super::observe::{ObserveLayer, StreamMessages};
use super::pb::{
    self,
    sync_service_server::{SyncService, SyncServiceServer},
};
use super::rate::{RateLimits, Spend};
use super::tenant_streams::TenantStreams;
use crate::app::App;
use crate::auth::{Authenticator, Principal, TenantLimits};
use crate::config::Config;
use crate::engine::{SessionId, SessionKey};
use crate::probes::Readiness;
use crate::prometheus::names;

pub struct GrpcService {
    app: App,
    auth: Arc<Authenticator>,
    limits: Arc<RateLimits>,
    streams: Arc<TenantStreams>,
    /// Counts each message a Subscribe stream sends.
    sent: Arc<StreamMessages>,
    /// Counts each message a WatchSessions stream sends.
    watch_sent: Arc<StreamMessages>,
}

impl GrpcService {
    /// The caller the auth layer admitted, named on the call's span.
    fn principal<T>(&self, req: &Request<T>) -> Result<Principal, Status> {
        // Only reachable without the auth layer (a wiring bug): refuse.
        let p = req
            .extensions()
            .get::<Principal>()
            .cloned()
            .ok_or_else(|| Status::unauthenticated("no credential"))?;
        let span = tracing::Span::current();
        if !span.is_disabled() {
            span.record("caller", p.label());
            span.record("tenant", p.tenant_str());
        }
        Ok(p)
    }

    fn tenant_limits(&self, p: &Principal) -> TenantLimits {
        match p {
            Principal::Open => TenantLimits::default(),
            _ => self.auth.tenant_limits(p.tenant_str()),
        }
    }

    /// The caller and one `spend` of its rate limit, before anything else.
    fn admit<T>(&self, spend: Spend, req: &Request<T>) -> Result<Principal, Status> {
        let p = self.principal(req)?;
        let own = self.tenant_limits(&p);
        let rate = match spend {
            Spend::Create => own.creates,
            Spend::Mutation => own.mutations,
        };
        if let Err(refused) =
            self.limits
                .check(spend, &caller_of(req), rate.map(|r| (p.tenant_str(), r)))
        {
            let limit = match spend {
                Spend::Create => "create",
                Spend::Mutation => "mutation",
            };
            metrics::counter!(names::TENANT_RATE_LIMITED, "tenant" => p.tenant_str().to_owned(), "limit" => limit)
                .increment(1);
            return Err(refused.into());
        }
        Ok(p)
    }
}

/// `id` under the caller's tenant, if the caller may touch it.
fn key_for(p: &Principal, raw: &str) -> Result<SessionKey, Status> {
    let id: SessionId = convert::session_id(raw)?;
    record_session_id(id.as_str());
    p.may_touch(&id).map_err(status_of)?;
    Ok(SessionKey {
        tenant: p.tenant(),
        id,
    })
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
    async fn create_session(&self, req: Request<pb::CreateSessionRequest>) -> Reply<pb::Session> {
        let p = self.admit(Spend::Create, &req)?;
        let unnamed = req.get_ref().session_id.is_empty();
        let mut new = convert::create_request(req.into_inner())?;
        // A retried unnamed create must find the session it made.
        if unnamed && let Some(rid) = &new.request_id {
            new.id = crate::app::derived_session_id(&p.tenant(), rid.as_str())?;
        }
        record_session_id(new.id.as_str());
        session_reply(self.app.create(p.tenant(), new).await?)
    }

    async fn get_session(&self, req: Request<pb::GetSessionRequest>) -> Reply<pb::Session> {
        let p = self.principal(&req)?;
        let key = key_for(&p, &req.get_ref().session_id)?;
        session_reply(self.app.get(key).await?)
    }

    async fn start_session(&self, req: Request<pb::StartSessionRequest>) -> Reply<pb::Session> {
        let p = self.admit(Spend::Mutation, &req)?;
        let r = req.into_inner();
        let key = key_for(&p, &r.session_id)?;
        let first = convert::start_first(&r)?;
        let guards = convert::guards(r.expected_version, &r.request_id)?;
        session_reply(self.app.start(key, first, guards).await?)
    }

    async fn switch_cycle(&self, req: Request<pb::SwitchCycleRequest>) -> Reply<pb::Session> {
        let p = self.admit(Spend::Mutation, &req)?;
        let r = req.into_inner();
        let key = key_for(&p, &r.session_id)?;
        let (from, next) = convert::switch_args(&r)?;
        let lag_ms = convert::lag_ms(&r)?;
        let from = p.switch_from(from).map_err(status_of)?;
        let guards = convert::guards(r.expected_version, &r.request_id)?;
        session_reply(self.app.switch(key, from, next, lag_ms, guards).await?)
    }

    async fn pause_session(&self, req: Request<pb::PauseSessionRequest>) -> Reply<pb::Session> {
        let p = self.admit(Spend::Mutation, &req)?;
        let r = req.into_inner();
        let key = key_for(&p, &r.session_id)?;
        session_reply(
            self.app
                .pause(key, convert::guards(r.expected_version, &r.request_id)?)
                .await?,
        )
    }

    async fn resume_session(&self, req: Request<pb::ResumeSessionRequest>) -> Reply<pb::Session> {
        let p = self.admit(Spend::Mutation, &req)?;
        let r = req.into_inner();
        let key = key_for(&p, &r.session_id)?;
        session_reply(
            self.app
                .resume(key, convert::guards(r.expected_version, &r.request_id)?)
                .await?,
        )
    }

    async fn complete_session(
        &self,
        req: Request<pb::CompleteSessionRequest>,
    ) -> Reply<pb::Session> {
        let p = self.admit(Spend::Mutation, &req)?;
        let r = req.into_inner();
        let key = key_for(&p, &r.session_id)?;
        session_reply(
            self.app
                .complete(key, convert::guards(r.expected_version, &r.request_id)?)
                .await?,
        )
    }

    async fn cancel_session(&self, req: Request<pb::CancelSessionRequest>) -> Reply<pb::Session> {
        let p = self.admit(Spend::Mutation, &req)?;
        let r = req.into_inner();
        let key = key_for(&p, &r.session_id)?;
        session_reply(
            self.app
                .cancel(key, convert::guards(r.expected_version, &r.request_id)?)
                .await?,
        )
    }

    async fn adjust_time(&self, req: Request<pb::AdjustTimeRequest>) -> Reply<pb::Session> {
        let p = self.admit(Spend::Mutation, &req)?;
        let r = req.into_inner();
        let key = key_for(&p, &r.session_id)?;
        let target = convert::adjust_target(&r)?;
        let guards = convert::guards(r.expected_version, &r.request_id)?;
        session_reply(self.app.adjust(key, target, r.delta_ms, guards).await?)
    }

    async fn delete_session(&self, req: Request<pb::DeleteSessionRequest>) -> Reply<()> {
        let p = self.admit(Spend::Mutation, &req)?;
        let key = key_for(&p, &req.get_ref().session_id)?;
        self.app.delete(key).await?;
        Ok(Response::new(()))
    }

    async fn get_server_time(
        &self,
        req: Request<pb::GetServerTimeRequest>,
    ) -> Reply<pb::ServerTime> {
        self.principal(&req)?;
        Ok(Response::new(pb::ServerTime {
            server_time: Some(convert::timestamp(self.app.server_time())),
        }))
    }

    type SubscribeStream = EventStream;

    async fn subscribe(&self, req: Request<pb::SubscribeRequest>) -> Reply<Self::SubscribeStream> {
        let p = self.principal(&req)?;
        let r = req.into_inner();
        let key = key_for(&p, &r.session_id)?;
        let opts = crate::app::SubscribeOptions {
            from_version: r.from_version,
            epoch: convert::epoch(r.epoch)?,
            strict: r.strict,
            heartbeat_ms: r.heartbeat_ms,
        };
        // Held by the stream, so given back whenever tonic drops it.
        let slot = self
            .streams
            .acquire(&key.tenant, self.tenant_limits(&p).max_streams)?;
        let rx = self.app.subscribe(key, opts).await?;
        let sent = self.sent.clone();
        let stream = ReceiverStream::new(rx).map(move |item| {
            let _slot = &slot;
            sent.sent();
            item.map(|i| convert::stream_item(&i)).map_err(Status::from)
        });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn list_session_events(
        &self,
        req: Request<pb::ListSessionEventsRequest>,
    ) -> Reply<pb::ListSessionEventsResponse> {
        let p = self.principal(&req)?;
        let r = req.into_inner();
        let key = key_for(&p, &r.session_id)?;
        let page_token = convert::page_token(r.page_token)?;
        let page = self
            .app
            .history(key, r.page_size, &page_token, r.after_version)
            .await?;
        Ok(Response::new(pb::ListSessionEventsResponse {
            events: page.events.iter().map(convert::event).collect(),
            next_page_token: page.next_page_token,
        }))
    }

    async fn undo_switch(&self, req: Request<pb::UndoSwitchRequest>) -> Reply<pb::Session> {
        let p = self.admit(Spend::Mutation, &req)?;
        let r = req.into_inner();
        let key = key_for(&p, &r.session_id)?;
        let guards = convert::guards(r.expected_version, &r.request_id)?;
        session_reply(self.app.undo_switch(key, guards).await?)
    }

    async fn list_sessions(
        &self,
        req: Request<pb::ListSessionsRequest>,
    ) -> Reply<pb::ListSessionsResponse> {
        let p = self.principal(&req)?;
        let r = req.into_inner();
        let query = crate::app::ListQuery {
            page_size: r.page_size,
            page_token: convert::page_token(r.page_token)?,
            statuses: crate::app::StatusFilter::of(&convert::statuses(&r.statuses)?),
        };
        let page = self
            .app
            .list_sessions(p.tenant(), query, |s, now| {
                let session = convert::session(s, now);
                let len = prost::Message::encoded_len(&session);
                (session, len)
            })
            .await?;
        Ok(Response::new(pb::ListSessionsResponse {
            sessions: page.sessions,
            next_page_token: page.next_page_token,
        }))
    }

    type WatchSessionsStream =
        Pin<Box<dyn Stream<Item = Result<pb::WatchSessionsResponse, Status>> + Send>>;

    async fn watch_sessions(
        &self,
        req: Request<pb::WatchSessionsRequest>,
    ) -> Reply<Self::WatchSessionsStream> {
        let p = self.principal(&req)?;
        let (opts, omit_session) = super::watch::request(req.into_inner())?;
        // One stream against the tenant's and the replica's stream limits,
        // however many sessions it follows; held by the stream.
        let tenant = p.tenant();
        let slot = self
            .streams
            .acquire(&tenant, self.tenant_limits(&p).max_streams)?;
        let rx = self.app.watch(tenant, opts).await?;
        let sent = self.watch_sent.clone();
        let stream = ReceiverStream::new(rx).map(move |item| {
            let _slot = &slot;
            sent.sent();
            item.map(|i| super::watch::response(&i, omit_session))
                .map_err(Status::from)
        });
        Ok(Response::new(Box::pin(stream)))
    }
}

/// Sets the health of both the overall server ("") and
/// `synckairos.v1.SyncService`: SERVING exactly when the process is ready
/// (`crate::probes::Readiness`, followed by startup.rs' health task).
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

/// What every request passes through, outermost first:
/// 1. CORS, only with `SYNCKAIROS_CORS_ORIGINS` (grpc/web.rs): it answers
///    preflights and marks the replies to allowed origins;
/// 2. a panic guard for what lies outside the inner one (the probes and the
///    translation);
/// 3. the probes, answered before anything else reads the request;
/// 4. gRPC-Web's translation (a gRPC-Web call becomes a gRPC call from
///    here in; any other HTTP/1.1 request is refused `400`);
/// 5. the metrics, span and access log of each call (grpc/observe.rs);
/// 6. the panic guard of each call (grpc/panic.rs);
/// 7. auth (grpc/auth.rs).
pub type Layers = tower_layer::Stack<
    AuthLayer,
    tower_layer::Stack<
        super::CatchPanic,
        tower_layer::Stack<
            ObserveLayer,
            tower_layer::Stack<
                super::web::GrpcWebLayer,
                tower_layer::Stack<
                    super::probes::ProbeLayer,
                    tower_layer::Stack<
                        super::CatchPanic,
                        tower_layer::Stack<
                            tower::util::Either<tower_http::cors::CorsLayer, tower_layer::Identity>,
                            tower_layer::Identity,
                        >,
                    >,
                >,
            >,
        >,
    >,
>;

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
/// - per-caller rate limits on creates and mutations (grpc/rate.rs), and
///   per-tenant Subscribe streams (grpc/tenant_streams.rs);
/// - what every request passes through, outermost first ([`Layers`]);
/// - reflection only when `config.reflection`.
///
/// TCP keepalive is set on the listener's incoming stream in startup.rs:
/// tonic ignores `Server::tcp_keepalive` with `serve_with_incoming`. Not set
/// here on purpose: `concurrency_limit_per_connection` (a tower limit on
/// calls whose response head is pending, so it bounds no stream and only
/// queues unary calls behind each other) and `timeout` (it would also cut a
/// Subscribe before its first message when the store is slow; the store
/// already fails its calls within ~250 ms).
///
/// HTTP/1.1 is accepted too (`accept_http1`), for the `GET /health` and
/// `GET /ready` probes (grpc/probes.rs) and for gRPC-Web (grpc/web.rs);
/// gRPC clients speak HTTP/2 (negotiated by the connection preface, or by
/// ALPN under TLS) and are unaffected.
pub fn router(
    app: App,
    config: &Config,
    auth: Arc<Authenticator>,
    readiness: Readiness,
) -> anyhow::Result<(tonic::transport::server::Router<Layers>, HealthControl)> {
    let (reporter, health_service) = tonic_health::server::health_reporter();
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            // google.rpc.BadRequest and RetryInfo, so that grpcurl can print
            // the status details (grpc/error.rs) instead of raw bytes.
            .register_encoded_file_descriptor_set(tonic_types::pb::FILE_DESCRIPTOR_SET)
    };
    let clock = app.clone();
    let now_secs = Arc::new(move || u64::try_from(clock.server_time() / 1_000_000).unwrap_or(0));
    let observe = ObserveLayer::new(config.access_log);
    let sent = Arc::new(observe.subscribe_messages());
    let watch_sent = Arc::new(observe.watch_messages());
    let cors = tower::util::option_layer(super::web::cors(config.cors_origins.as_ref()));
    let mut server = tonic::transport::Server::builder()
        .accept_http1(true)
        .layer(cors)
        .layer(super::catch_panic())
        .layer(super::probes::ProbeLayer::new(readiness))
        .layer(super::web::GrpcWebLayer::new())
        .layer(observe)
        .layer(super::catch_panic())
        .layer(AuthLayer::new(auth.clone(), now_secs))
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
    let sync = SyncServiceServer::new(GrpcService {
        app,
        auth,
        limits,
        streams: Arc::default(),
        sent,
        watch_sent,
    })
    .max_decoding_message_size(config.max_request_bytes)
    .max_encoding_message_size(config.max_response_bytes);
    let (v1, v1alpha) = if config.reflection {
        (
            Some(reflection().build_v1()?),
            Some(reflection().build_v1alpha()?),
        )
    } else {
        (None, None)
    };
    let router = server
        .add_service(health_service)
        .add_optional_service(v1)
        .add_optional_service(v1alpha)
        .add_service(sync);
    Ok((router, HealthControl { reporter }))
}
