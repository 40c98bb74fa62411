//! gRPC-Web on the gRPC port, for browsers (issue 16): raw HTTP/1.1
//! requests built by hand from the gRPC-Web protocol (PROTOCOL-WEB.md:
//! each message a frame `flag, u32 length, bytes`; the trailers a last frame
//! with flag 0x80), so the server is checked against the protocol, not
//! against a client of the same library; then a generated client through
//! tonic-web's client layer over HTTP/1.1 for a Subscribe stream read as it
//! arrives; CORS as `SYNCKAIROS_CORS_ORIGINS` says; auth through the same
//! headers; and what a hostile client can send: bad frames, bad base64,
//! lengths beyond the limit, other methods and content types.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use base64::Engine as _;
use prost::Message;
use synckairos::auth::KeySource;
use synckairos::grpc::pb;
use synckairos::grpc::web::CorsOrigins;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tonic::Code;

use crate::auth::{ADMIN, KeysFile, READ, keys_toml, token};
use crate::helpers::*;

const SERVICE: &str = "/synckairos.v1.SyncService/";
const PAGE: &str = "http://127.0.0.1:5173";

/// Request headers, name and value.
type Headers = [(&'static str, &'static str)];

/// An HTTP/1.1 reply: status, headers (lowercase names), body (de-chunked).
#[derive(Debug)]
struct Reply {
    status: u16,
    headers: HashMap<String, String>,
    body: Vec<u8>,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(String::as_str)
    }
}

/// One request over a fresh connection (`Connection: close`), read to its end.
async fn http1(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Reply {
    let mut io = TcpStream::connect(addr).await.expect("connect");
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    io.write_all(head.as_bytes()).await.expect("send head");
    io.write_all(body).await.expect("send body");
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), io.read_to_end(&mut raw))
        .await
        .expect("the reply ends within 10 s")
        .expect("read the reply");
    parse_reply(&raw)
}

fn parse_reply(raw: &[u8]) -> Reply {
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no end of head in {:?}", String::from_utf8_lossy(raw)));
    let head = String::from_utf8_lossy(&raw[..end]).into_owned();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|c| c.parse().ok())
        .expect("a status line");
    let headers: HashMap<String, String> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let mut body = raw[end + 4..].to_vec();
    if headers
        .get("transfer-encoding")
        .is_some_and(|t| t == "chunked")
    {
        body = dechunk(&body);
    }
    Reply {
        status,
        headers,
        body,
    }
}

fn dechunk(mut raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let Some(eol) = raw.windows(2).position(|w| w == b"\r\n") else {
            return out;
        };
        let size = usize::from_str_radix(String::from_utf8_lossy(&raw[..eol]).trim(), 16)
            .expect("a chunk size");
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&raw[eol + 2..eol + 2 + size]);
        raw = &raw[eol + 2 + size + 2..];
    }
}

/// One gRPC-Web frame.
fn frame(flag: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = vec![flag];
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// A reply body's frames: messages, then the trailers (name → value).
fn frames(mut body: &[u8]) -> (Vec<Vec<u8>>, HashMap<String, String>) {
    let mut messages = Vec::new();
    let mut trailers = HashMap::new();
    while body.len() >= 5 {
        let flag = body[0];
        let len = u32::from_be_bytes([body[1], body[2], body[3], body[4]]) as usize;
        let payload = &body[5..5 + len];
        if flag & 0x80 != 0 {
            for line in String::from_utf8_lossy(payload).split("\r\n") {
                if let Some((k, v)) = line.split_once(':') {
                    trailers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
                }
            }
        } else {
            messages.push(payload.to_vec());
        }
        body = &body[5 + len..];
    }
    assert!(body.is_empty(), "{} bytes after the last frame", body.len());
    (messages, trailers)
}

/// The gRPC status of a gRPC-Web reply: in its trailers frame, or in its
/// head for a trailers-only reply.
fn grpc_status(reply: &Reply) -> (i32, String) {
    let (_, trailers) = frames(&reply.body);
    let get = |k: &str| trailers.get(k).map(String::as_str).or(reply.header(k));
    let code = get("grpc-status")
        .unwrap_or_else(|| panic!("no grpc-status in {reply:?}"))
        .parse()
        .expect("a numeric grpc-status");
    let message = get("grpc-message").unwrap_or("").to_string();
    (code, message)
}

/// A unary gRPC-Web call in binary mode: the reply and its one message.
async fn unary(
    addr: SocketAddr,
    method: &str,
    req: &impl Message,
    extra: &[(&str, &str)],
) -> (Reply, Option<Vec<u8>>) {
    let mut headers = vec![
        ("content-type", "application/grpc-web+proto"),
        ("x-grpc-web", "1"),
    ];
    headers.extend_from_slice(extra);
    let reply = http1(
        addr,
        "POST",
        &format!("{SERVICE}{method}"),
        &headers,
        &frame(0, &req.encode_to_vec()),
    )
    .await;
    let (mut messages, _) = frames(&reply.body);
    assert!(messages.len() <= 1, "a unary reply has at most one message");
    (reply, messages.pop())
}

/// GetServerTime over gRPC-Web with `extra` headers: the reply and its message.
async fn server_time(addr: SocketAddr, extra: &[(&str, &str)]) -> (Reply, Option<Vec<u8>>) {
    unary(addr, "GetServerTime", &pb::GetServerTimeRequest {}, extra).await
}

#[tokio::test]
async fn grpc_web_calls_over_http1_get_their_messages_and_trailers_in_the_body() {
    let app = spawn_app().await;
    let before = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_micros() as i64;
    let (reply, msg) = server_time(app.addr, &[]).await;
    assert_eq!(reply.status, 200);
    assert_eq!(
        reply.header("content-type"),
        Some("application/grpc-web+proto")
    );
    assert_eq!(grpc_status(&reply).0, 0);
    let time = pb::ServerTime::decode(msg.expect("a message").as_slice()).expect("a ServerTime");
    let server = micros(time.server_time.as_ref().expect("server_time"));
    assert!(
        (server - before).abs() < 5_000_000,
        "server time {server} vs {before}"
    );

    // A session made, started and switched over gRPC-Web, read back over gRPC.
    let id = unique_id("web");
    let (reply, msg) = unary(app.addr, "CreateSession", &chess(&id, 60_000), &[]).await;
    assert_eq!(grpc_status(&reply), (0, String::new()));
    let made = pb::Session::decode(msg.unwrap().as_slice()).unwrap();
    assert_eq!(made.session_id, id);
    let (reply, _) = unary(
        app.addr,
        "StartSession",
        &pb::StartSessionRequest {
            session_id: id.clone(),
            ..Default::default()
        },
        &[],
    )
    .await;
    assert_eq!(grpc_status(&reply).0, 0);
    let (reply, msg) = unary(app.addr, "SwitchCycle", &switch_req(&id), &[]).await;
    assert_eq!(grpc_status(&reply).0, 0);
    let switched = pb::Session::decode(msg.unwrap().as_slice()).unwrap();
    let mut client = app.client.clone();
    assert_eq!(get(&mut client, &id).await.version, switched.version);

    // An error: the code and message a gRPC client would get, and no message.
    let (reply, msg) = unary(
        app.addr,
        "GetSession",
        &pb::GetSessionRequest {
            session_id: unique_id("missing"),
        },
        &[],
    )
    .await;
    assert_eq!(reply.status, 200);
    assert_eq!(grpc_status(&reply).0, Code::NotFound as i32, "{reply:?}");
    assert!(msg.is_none());
    // A field violation keeps its rich details (google.rpc.BadRequest).
    let (reply, _) = unary(
        app.addr,
        "GetSession",
        &pb::GetSessionRequest {
            session_id: String::new(),
        },
        &[],
    )
    .await;
    assert_eq!(grpc_status(&reply).0, Code::InvalidArgument as i32);
    let (_, trailers) = frames(&reply.body);
    let details = trailers
        .get("grpc-status-details-bin")
        .map(String::as_str)
        .or(reply.header("grpc-status-details-bin"))
        .expect("status details");
    let details = base64::engine::general_purpose::STANDARD_NO_PAD
        .decode(details.trim_end_matches('='))
        .expect("base64 details");
    assert!(String::from_utf8_lossy(&details).contains("session_id"));
}

#[tokio::test]
async fn grpc_web_text_mode_is_base64_both_ways() {
    let app = spawn_app().await;
    let b64 = base64::engine::general_purpose::STANDARD;
    let body = b64.encode(frame(0, &pb::GetServerTimeRequest {}.encode_to_vec()));
    let reply = http1(
        app.addr,
        "POST",
        &format!("{SERVICE}GetServerTime"),
        &[
            ("content-type", "application/grpc-web-text"),
            ("accept", "application/grpc-web-text"),
        ],
        body.as_bytes(),
    )
    .await;
    assert_eq!(reply.status, 200);
    assert_eq!(
        reply.header("content-type"),
        Some("application/grpc-web-text+proto")
    );
    // Each frame is base64 on its own (the trailers come padded after the message).
    let text = String::from_utf8(reply.body.clone()).expect("text");
    let mut decoded = Vec::new();
    let mut rest = text.as_str();
    while !rest.is_empty() {
        let cut = rest
            .find('=')
            .map(|i| i + rest[i..].chars().take_while(|c| *c == '=').count())
            .unwrap_or(rest.len());
        decoded.extend(b64.decode(&rest[..cut]).expect("base64"));
        rest = &rest[cut..];
    }
    let (messages, trailers) = frames(&decoded);
    assert_eq!(messages.len(), 1);
    assert!(
        pb::ServerTime::decode(messages[0].as_slice())
            .unwrap()
            .server_time
            .is_some()
    );
    assert_eq!(trailers.get("grpc-status").map(String::as_str), Some("0"));
}

/// The HTTP/1.1 client under [`web_client`].
type Http1 = hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    tonic_web::GrpcWebCall<tonic::body::Body>,
>;

/// A generated client speaking gRPC-Web over HTTP/1.1 (tonic-web's client layer).
fn web_client(
    addr: SocketAddr,
) -> pb::sync_service_client::SyncServiceClient<tonic_web::GrpcWebClientService<Http1>> {
    let http1: Http1 =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build_http();
    let svc = tower::ServiceBuilder::new()
        .layer(tonic_web::GrpcWebClientLayer::new())
        .service(http1);
    let origin = format!("http://{addr}").parse().expect("uri");
    pb::sync_service_client::SyncServiceClient::with_origin(svc, origin)
}

#[tokio::test]
async fn subscribe_streams_over_grpc_web_each_event_as_it_happens() {
    let app = spawn_app().await;
    let mut grpc = app.client.clone();
    let id = create_started(&mut grpc).await.session_id;
    let mut web = web_client(app.addr);
    let reply = web
        .subscribe(subscribe_req(&id))
        .await
        .expect("Subscribe over gRPC-Web");
    // The server spoke gRPC-Web (a server without it answers gRPC even
    // over HTTP/1.1, which this client would read too).
    assert_eq!(
        reply
            .metadata()
            .get("content-type")
            .and_then(|v| v.to_str().ok()),
        Some("application/grpc-web+proto")
    );
    let mut stream = reply.into_inner();
    let first = tokio::time::timeout(Duration::from_secs(5), stream.message())
        .await
        .expect("a first event within 5 s")
        .expect("no error")
        .expect("an event");
    assert_eq!(event_type(&first), pb::EventType::Snapshot);
    for _ in 0..3 {
        let switched = switch(&mut grpc, &id).await;
        // Each change arrives while the HTTP/1.1 reply is still open.
        let event = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                let e = stream.message().await.expect("no error").expect("an event");
                if event_type(&e) != pb::EventType::Heartbeat {
                    return e;
                }
            }
        })
        .await
        .expect("the switch's event within 5 s");
        assert_eq!(event_type(&event), pb::EventType::Switched);
        assert_eq!(
            event.session.as_ref().map(|s| s.version),
            Some(switched.version)
        );
    }
    // A missing session is NOT_FOUND over gRPC-Web too.
    let missing = web.subscribe(subscribe_req(&unique_id("missing"))).await;
    let status = match missing {
        Err(status) => status,
        Ok(resp) => resp.into_inner().message().await.expect_err("NOT_FOUND"),
    };
    assert_eq!(status.code(), Code::NotFound);
}

/// A preflight as a browser sends it before a gRPC-Web call from `origin`.
async fn preflight(addr: SocketAddr, origin: &str) -> Reply {
    http1(
        addr,
        "OPTIONS",
        &format!("{SERVICE}GetServerTime"),
        &[
            ("origin", origin),
            ("access-control-request-method", "POST"),
            (
                "access-control-request-headers",
                "authorization,content-type,x-grpc-web,x-user-agent",
            ),
        ],
        b"",
    )
    .await
}

#[tokio::test]
async fn without_cors_origins_no_cors_header_is_ever_sent() {
    let app = spawn_app().await;
    let pre = preflight(app.addr, PAGE).await;
    assert!(
        !pre.headers.keys().any(|k| k.starts_with("access-control-")),
        "{pre:?}"
    );
    let (reply, _) = server_time(app.addr, &[("origin", PAGE)]).await;
    assert_eq!(
        grpc_status(&reply).0,
        0,
        "a same-origin or non-browser call still works"
    );
    assert!(
        !reply
            .headers
            .keys()
            .any(|k| k.starts_with("access-control-")),
        "{reply:?}"
    );
}

#[tokio::test]
async fn cors_lets_the_listed_origins_call_and_read_the_status() {
    let app = spawn_app_with(|c| {
        c.cors_origins =
            Some(CorsOrigins::parse(&format!("https://play.example.com,{PAGE}")).unwrap());
    })
    .await;
    let pre = preflight(app.addr, PAGE).await;
    assert!((200..300).contains(&pre.status), "{pre:?}");
    assert_eq!(pre.header("access-control-allow-origin"), Some(PAGE));
    assert!(
        pre.header("access-control-allow-methods")
            .unwrap_or("")
            .contains("POST")
    );
    let allowed = pre
        .header("access-control-allow-headers")
        .unwrap_or("")
        .to_ascii_lowercase();
    for h in [
        "authorization",
        "content-type",
        "x-grpc-web",
        "x-user-agent",
        "grpc-timeout",
    ] {
        assert!(allowed.contains(h), "{h} not in {allowed:?}");
    }
    assert_eq!(pre.header("access-control-max-age"), Some("7200"));
    assert_eq!(pre.header("access-control-allow-credentials"), None);

    // The call itself: the reply names the origin and exposes the status.
    let (reply, _) = unary(
        app.addr,
        "GetSession",
        &pb::GetSessionRequest {
            session_id: unique_id("missing"),
        },
        &[("origin", PAGE)],
    )
    .await;
    assert_eq!(grpc_status(&reply).0, Code::NotFound as i32);
    assert_eq!(reply.header("access-control-allow-origin"), Some(PAGE));
    let exposed = reply
        .header("access-control-expose-headers")
        .unwrap_or("")
        .to_ascii_lowercase();
    for h in ["grpc-status", "grpc-message", "grpc-status-details-bin"] {
        assert!(exposed.contains(h), "{h} not in {exposed:?}");
    }

    // Another origin is not let in: no allow-origin for it, so its browser refuses.
    for other in ["http://127.0.0.1:5174", "https://evil.example", "null"] {
        let pre = preflight(app.addr, other).await;
        assert_eq!(
            pre.header("access-control-allow-origin"),
            None,
            "{other}: {pre:?}"
        );
        let (reply, _) = server_time(app.addr, &[("origin", other)]).await;
        assert_eq!(
            reply.header("access-control-allow-origin"),
            None,
            "{other}: {reply:?}"
        );
    }
}

#[tokio::test]
async fn cors_star_lets_any_origin_call() {
    let app = spawn_app_with(|c| c.cors_origins = Some(CorsOrigins::Any)).await;
    let pre = preflight(app.addr, "https://anywhere.example").await;
    assert_eq!(pre.header("access-control-allow-origin"), Some("*"));
}

#[tokio::test]
async fn grpc_web_calls_are_authenticated_like_grpc_and_preflights_need_no_credential() {
    let keys = KeysFile::new(&keys_toml());
    let path = keys.path.clone();
    let app = spawn_app_with(move |c| {
        c.api_keys = Some(KeySource::File(path));
        c.cors_origins = Some(CorsOrigins::parse(PAGE).unwrap());
    })
    .await;
    let pre = preflight(app.addr, PAGE).await;
    assert_eq!(
        pre.header("access-control-allow-origin"),
        Some(PAGE),
        "{pre:?}"
    );

    let (reply, _) = server_time(app.addr, &[("origin", PAGE)]).await;
    assert_eq!(grpc_status(&reply).0, Code::Unauthenticated as i32);
    assert_eq!(
        reply.header("access-control-allow-origin"),
        Some(PAGE),
        "a refusal is readable by the page"
    );

    let bearer = format!("Bearer {ADMIN}");
    let id = unique_id("web-auth");
    let (reply, _) = unary(
        app.addr,
        "CreateSession",
        &chess(&id, 60_000),
        &[("authorization", &bearer)],
    )
    .await;
    assert_eq!(grpc_status(&reply).0, 0, "{reply:?}");
    let read = format!("Bearer {READ}");
    let (reply, _) = unary(
        app.addr,
        "SwitchCycle",
        &switch_req(&id),
        &[("authorization", &read)],
    )
    .await;
    assert_eq!(grpc_status(&reply).0, Code::PermissionDenied as i32);
    // A player token for this session reads it.
    let player = format!("Bearer {}", token(&id, "play", Some("white")));
    let (reply, msg) = unary(
        app.addr,
        "GetSession",
        &pb::GetSessionRequest {
            session_id: id.clone(),
        },
        &[("authorization", &player)],
    )
    .await;
    assert_eq!(grpc_status(&reply).0, 0, "{reply:?}");
    assert_eq!(
        pb::Session::decode(msg.unwrap().as_slice())
            .unwrap()
            .session_id,
        id
    );
    let (reply, _) = server_time(app.addr, &[("authorization", "Bearer not-a-key")]).await;
    assert_eq!(grpc_status(&reply).0, Code::Unauthenticated as i32);
}

#[tokio::test]
async fn hostile_grpc_web_requests_are_refused_and_the_server_goes_on() {
    let app = spawn_app_with(|c| c.max_request_bytes = 64 * 1024).await;
    let path = format!("{SERVICE}GetSession");
    let web = [("content-type", "application/grpc-web+proto")];
    let text = [("content-type", "application/grpc-web-text")];
    let valid = pb::GetSessionRequest {
        session_id: unique_id("x"),
    }
    .encode_to_vec();
    let mut cases: Vec<(&str, Vec<u8>, &Headers)> = vec![
        ("a frame cut short", frame(0, &valid)[..8].to_vec(), &web),
        (
            "a length far beyond the body",
            [&[0u8, 0x7f, 0xff, 0xff, 0xff][..], &valid].concat(),
            &web,
        ),
        (
            "a length beyond the request limit",
            frame(0, &vec![b'a'; 100_000]),
            &web,
        ),
        ("a compressed flag with no encoding", frame(1, &valid), &web),
        ("bytes that are no protobuf", frame(0, &[0xff; 32]), &web),
        (
            "two messages to a unary call",
            [frame(0, &valid), frame(0, &valid)].concat(),
            &web,
        ),
        ("no frame at all", Vec::new(), &web),
        ("base64 that is not", b"!!!not base64***".to_vec(), &text),
        (
            "base64 of a cut frame",
            base64::engine::general_purpose::STANDARD
                .encode(&frame(0, &valid)[..7])
                .into_bytes(),
            &text,
        ),
    ];
    cases.push((
        "a trailer frame as the request",
        frame(0x80, b"grpc-status: 0\r\n"),
        &web,
    ));
    for (what, body, headers) in cases {
        let reply = http1(app.addr, "POST", &path, headers, &body).await;
        assert_eq!(reply.status, 200, "{what}: {reply:?}");
        let (code, message) = grpc_status(&reply);
        // tonic's own answers, the same as over gRPC: framing and protobuf
        // errors are INTERNAL (as in grpc-go), a length beyond the limit is
        // OUT_OF_RANGE before any of it is buffered, a unary call reads its
        // first message.
        let expected = match what {
            "a length far beyond the body" | "a length beyond the request limit" => {
                Code::OutOfRange
            }
            "two messages to a unary call" => Code::NotFound,
            _ => Code::Internal,
        };
        assert_eq!(code, expected as i32, "{what}: {message}");
    }
    // Not gRPC-Web over HTTP/1.1: refused without reaching a handler.
    let not_web = http1(
        app.addr,
        "POST",
        &path,
        &[("content-type", "application/grpc")],
        &frame(0, &valid),
    )
    .await;
    assert_eq!(not_web.status, 400, "{not_web:?}");
    let get = http1(app.addr, "GET", &path, &web, b"").await;
    assert_eq!(get.status, 405, "{get:?}");
    let junk = http1(
        app.addr,
        "POST",
        &path,
        &[("content-type", "text/plain\u{1}")],
        b"hello",
    )
    .await;
    assert_eq!(junk.status, 400, "{junk:?}");

    // The server serves on, over gRPC and gRPC-Web.
    let mut client = app.client.clone();
    create_started(&mut client).await;
    let (reply, _) = server_time(app.addr, &[]).await;
    assert_eq!(grpc_status(&reply).0, 0);
}
