//! Browsers on the gRPC port: gRPC-Web (tonic-web's translation) and CORS.
//!
//! A browser cannot make a native gRPC call (no HTTP/2 trailers from
//! `fetch`), so the port also speaks gRPC-Web, over HTTP/1.1 and HTTP/2,
//! binary (`application/grpc-web+proto`) and text (`application/grpc-web-text`).
//! [`GrpcWebLayer`] turns such a request into a gRPC one and its reply back,
//! the trailers (`grpc-status`, `grpc-message`, `grpc-status-details-bin`)
//! as the last frame of the body. Unary calls and server streams (`Subscribe`,
//! `WatchSessions`) work; gRPC-Web has no client streams, and this API has
//! none. Inside the translation the call is a gRPC call like any other:
//! observed, guarded against panics, authenticated (the `authorization`
//! header, key or player token) and limited as one.
//!
//! CORS ([`cors`]): a page served from another origin may call only when
//! its origin is in `SYNCKAIROS_CORS_ORIGINS` ([`CorsOrigins`], config.rs).
//! Unset (the default), no CORS header is ever sent, so browsers refuse
//! every cross-origin call and nothing changes for a deployment without
//! browsers; non-browser clients never send an `Origin` and are unaffected.
//! A preflight (`OPTIONS` with `Access-Control-Request-Method`) is answered
//! here, before the probes and auth (a preflight carries no credential),
//! allowing `POST` and the request headers a gRPC-Web client sends
//! ([`ALLOW_HEADERS`]), cached by the browser for [`PREFLIGHT_MAX_AGE`]; every
//! reply to an allowed origin exposes the gRPC status headers
//! ([`EXPOSE_HEADERS`]) so that a trailers-only error is readable. No
//! cookies are involved (`Access-Control-Allow-Credentials` is never sent):
//! credentials travel in the `authorization` header.
//!
//! A gRPC-Web call over HTTP/1.1 holds its connection for its whole life,
//! so a browser (6 connections per origin) can keep about 5 streams open
//! beside its unary calls; over HTTP/2 (TLS) the per-connection stream
//! limit applies as for gRPC. The replica's and the tenant's stream limits
//! count gRPC-Web streams like any other.

use std::time::Duration;

use http::{HeaderName, HeaderValue, Method};
use tower_http::cors::{AllowOrigin, CorsLayer};

pub use tonic_web::GrpcWebLayer;

/// Request headers a gRPC-Web client may send (connect-web, grpc-web,
/// improbable-eng): its content type and markers, the call's deadline, the
/// credential, and W3C trace context.
pub const ALLOW_HEADERS: [&str; 8] = [
    "content-type",
    "x-grpc-web",
    "x-user-agent",
    "grpc-timeout",
    "authorization",
    "traceparent",
    "tracestate",
    "connect-protocol-version",
];

/// Reply headers a page may read: the status of a trailers-only reply.
pub const EXPOSE_HEADERS: [&str; 3] = ["grpc-status", "grpc-message", "grpc-status-details-bin"];

/// How long a browser may cache a preflight's answer (Chromium caps it at 2 h).
pub const PREFLIGHT_MAX_AGE: Duration = Duration::from_secs(2 * 60 * 60);

/// Which origins may call from a browser: `SYNCKAIROS_CORS_ORIGINS`, a
/// comma-separated list of origins as a browser sends them
/// (`https://play.example.com`, `http://127.0.0.1:5173`), or `*` for any.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CorsOrigins {
    /// `*`: any origin (no credentials are involved, so this is safe only
    /// when every call needs its own key or token; in open mode it lets any
    /// page call).
    Any,
    /// Exactly these, each `scheme://host[:port]`, lowercased, a default
    /// port (`:80` for http, `:443` for https) left out as browsers do.
    List(Vec<String>),
}

/// At most this many origins in `SYNCKAIROS_CORS_ORIGINS`.
pub const MAX_CORS_ORIGINS: usize = 1_000;

impl CorsOrigins {
    /// Parses the variable's value; the error says which entry is wrong and why.
    pub fn parse(raw: &str) -> Result<Self, String> {
        let entries: Vec<&str> = raw.split(',').map(str::trim).collect();
        if entries == ["*"] {
            return Ok(Self::Any);
        }
        if entries.len() > MAX_CORS_ORIGINS {
            return Err(format!(
                "{} origins, more than {MAX_CORS_ORIGINS}",
                entries.len()
            ));
        }
        let mut list = Vec::with_capacity(entries.len());
        for (i, entry) in entries.iter().enumerate() {
            let origin = origin(entry).map_err(|why| format!("entry {i} ({entry:?}): {why}"))?;
            if !list.contains(&origin) {
                list.push(origin);
            }
        }
        Ok(Self::List(list))
    }
}

/// One origin, normalised as a browser serialises it.
fn origin(entry: &str) -> Result<String, &'static str> {
    if entry == "*" {
        return Err("`*` stands alone, not in a list");
    }
    if entry.is_empty() {
        return Err("empty");
    }
    if entry.len() > 255 || !entry.bytes().all(|b| b.is_ascii_graphic()) {
        return Err("must be at most 255 printable ASCII characters");
    }
    let lower = entry.to_ascii_lowercase();
    let (scheme, rest) = lower
        .split_once("://")
        .ok_or("must look like https://host or http://host:port")?;
    let default_port = match scheme {
        "http" => ":80",
        "https" => ":443",
        _ => return Err("the scheme must be http or https"),
    };
    if rest.contains(['/', '?', '#', '@']) {
        return Err("an origin has no path, query, fragment or user");
    }
    let (host, port) = match rest.rfind(':') {
        Some(at) if !rest[at..].contains(']') => (&rest[..at], Some(&rest[at + 1..])),
        _ => (rest, None),
    };
    let bracketed = host.starts_with('[') && host.ends_with(']');
    let host_ok = !host.is_empty()
        && (bracketed
            || host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.'));
    if !host_ok {
        return Err("the host must be a name, an IPv4 address or a bracketed IPv6 address");
    }
    match port {
        None => Ok(lower),
        Some(p) if p.parse::<u16>().is_ok_and(|p| p != 0) && !p.starts_with('0') => {
            if format!(":{p}") == default_port {
                Ok(format!("{scheme}://{host}"))
            } else {
                Ok(lower)
            }
        }
        Some(_) => Err("the port must be a number from 1 to 65535"),
    }
}

/// The CORS layer for `origins`, or none when no origin is allowed.
pub fn cors(origins: Option<&CorsOrigins>) -> Option<CorsLayer> {
    let allow = match origins? {
        CorsOrigins::Any => AllowOrigin::any(),
        // Checked by `CorsOrigins::parse`: ASCII with no control characters, so each
        // is a valid header value; one that were not would never match.
        CorsOrigins::List(list) => {
            AllowOrigin::list(list.iter().filter_map(|o| HeaderValue::from_str(o).ok()))
        }
    };
    Some(
        CorsLayer::new()
            .allow_origin(allow)
            .allow_methods([Method::POST])
            .allow_headers(ALLOW_HEADERS.map(HeaderName::from_static))
            .expose_headers(EXPOSE_HEADERS.map(HeaderName::from_static))
            .max_age(PREFLIGHT_MAX_AGE),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(raw: &str) -> Vec<String> {
        match CorsOrigins::parse(raw) {
            Ok(CorsOrigins::List(l)) => l,
            other => panic!("{raw:?}: {other:?}"),
        }
    }

    #[test]
    fn origins_are_read_as_browsers_send_them() {
        assert_eq!(
            list(
                "https://Play.Example.com, http://127.0.0.1:5173,https://a.io:443,http://[::1]:8080"
            ),
            [
                "https://play.example.com",
                "http://127.0.0.1:5173",
                "https://a.io",
                "http://[::1]:8080"
            ]
        );
        assert_eq!(list("http://x:80,http://x"), ["http://x"]);
        assert_eq!(CorsOrigins::parse(" * "), Ok(CorsOrigins::Any));
    }

    #[test]
    fn what_is_not_an_origin_is_refused_naming_the_entry() {
        for (raw, why) in [
            ("https://a.io,*", "entry 1 (\"*\"): `*` stands alone"),
            ("https://a.io/", "no path"),
            ("https://a.io/app", "no path"),
            ("a.io", "must look like"),
            ("ftp://a.io", "scheme"),
            ("https://", "the host"),
            ("https://a.io:0", "port"),
            ("https://a.io:65536", "port"),
            ("https://a.io:08", "port"),
            ("https://a b.io", "printable"),
            ("https://a.io\u{0}", "printable"),
            ("https://é.io", "printable"),
            ("https://u@a.io", "no path, query, fragment or user"),
            ("https://a.io,,https://b.io", "entry 1 (\"\"): empty"),
            ("https://a_b.io", "the host"),
        ] {
            let got = CorsOrigins::parse(raw).expect_err(raw);
            assert!(got.contains(why), "{raw:?}: {got:?} lacks {why:?}");
        }
        let many = vec!["https://a.io"; MAX_CORS_ORIGINS + 1].join(",");
        assert!(CorsOrigins::parse(&many).unwrap_err().contains("more than"));
    }

    #[test]
    fn the_variable_is_read_at_start_up_and_a_bad_value_names_it() {
        use crate::config::Config;
        let with = |v: &'static str| {
            Config::from_lookup(move |k| (k == "SYNCKAIROS_CORS_ORIGINS").then(|| v.to_string()))
        };
        assert_eq!(
            with("http://a.io:8080").unwrap().cors_origins,
            Some(CorsOrigins::List(vec!["http://a.io:8080".into()]))
        );
        let e = with("a.io").unwrap_err();
        assert_eq!(e.var, "SYNCKAIROS_CORS_ORIGINS");
        assert!(e.reason.contains("entry 0"), "{}", e.reason);
        assert_eq!(Config::from_lookup(|_| None).unwrap().cors_origins, None);
        assert!(cors(None).is_none());
    }
}
