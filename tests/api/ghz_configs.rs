//! The ghz configurations (ghz/*.json) and the script that makes their
//! sessions (ghz/create_sessions.sh). ghz cannot be installed here, so the
//! files are checked as ghz would read them: JSON; a `call` naming an rpc of
//! the proto; `proto` and `import-paths` that exist; data whose fields are
//! fields of the request message; session ids (ghz's `{{randomInt A B}}`
//! template) that are exactly the ones the script creates. Then the script
//! runs for real against a server (grpcurl), and each config's data, with
//! its template filled in, is sent as the request it describes.

use std::collections::BTreeSet;
use std::path::PathBuf;

use crate::grpcurl::{grpcurl, grpcurl_path, text};
use crate::helpers::*;

fn ghz_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("ghz")
}

/// Every ghz/*.json, parsed.
fn configs() -> Vec<(String, serde_json::Value)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(ghz_dir()).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "json") {
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            let text = std::fs::read_to_string(&path).unwrap();
            let json = serde_json::from_str(&text)
                .unwrap_or_else(|e| panic!("ghz/{name} is not JSON: {e}"));
            out.push((name, json));
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// The proto's rpcs (name -> request message) and messages (name -> fields),
/// read from its text.
struct Proto {
    rpcs: Vec<(String, String)>,
    messages: Vec<(String, Vec<String>)>,
}

fn proto() -> Proto {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("proto/synckairos/v1/sync.proto");
    let text = std::fs::read_to_string(path).unwrap();
    let code: Vec<&str> = text
        .lines()
        .map(|l| l.split("//").next().unwrap().trim())
        .collect();
    let mut rpcs = Vec::new();
    let mut messages = Vec::new();
    let mut current: Option<(String, Vec<String>, usize)> = None;
    for line in &code {
        if let Some(rest) = line.strip_prefix("rpc ") {
            // rpc Name(Request) returns (...)
            let (name, rest) = rest.split_once('(').expect("rpc Name(");
            let request = rest.split(')').next().unwrap().trim();
            let request = request.strip_prefix("stream ").unwrap_or(request);
            rpcs.push((name.trim().to_string(), request.to_string()));
        }
        if let Some((name, fields, depth)) = current.as_mut() {
            // Fields at the message's own depth: `[repeated|optional] type name = N;`
            if *depth == 1 && line.ends_with(';') && line.contains('=') {
                let lhs = line.split('=').next().unwrap();
                if let Some(field) = lhs.split_whitespace().last() {
                    fields.push(field.to_string());
                }
            }
            *depth += line.matches('{').count();
            *depth -= line.matches('}').count();
            if *depth == 0 {
                messages.push((name.clone(), std::mem::take(fields)));
                current = None;
            }
            continue;
        }
        if let Some(rest) = line.strip_prefix("message ") {
            let name = rest.split_whitespace().next().unwrap().to_string();
            let opens = line.matches('{').count() - line.matches('}').count();
            if opens == 0 {
                messages.push((name, Vec::new())); // `message X {}`
            } else {
                current = Some((name, Vec::new(), opens));
            }
        }
    }
    assert!(rpcs.len() > 10, "rpcs parsed: {rpcs:?}");
    Proto { rpcs, messages }
}

/// The ids a data string can be, for the one template the configs use:
/// `PREFIX{{randomInt A B}}SUFFIX` (ghz: a number in [A, B)). A string
/// without a template is itself.
fn template_values(s: &str) -> Vec<String> {
    let Some((prefix, rest)) = s.split_once("{{") else {
        return vec![s.to_string()];
    };
    let (action, suffix) = rest.split_once("}}").expect("a closed {{ }}");
    assert!(!suffix.contains("{{"), "one template per value: {s:?}");
    let words: Vec<&str> = action.split_whitespace().collect();
    let ["randomInt", low, high] = words[..] else {
        panic!("only {{{{randomInt A B}}}} is understood here: {s:?}");
    };
    let (low, high): (u32, u32) = (low.parse().unwrap(), high.parse().unwrap());
    (low..high)
        .map(|n| format!("{prefix}{n}{suffix}"))
        .collect()
}

/// A data object with every template filled in with `n` (a stand-in for
/// what ghz sends).
fn fill(data: &serde_json::Value, n: u32) -> serde_json::Value {
    match data {
        serde_json::Value::String(s) => match s.split_once("{{") {
            Some((prefix, rest)) => {
                let suffix = rest.split_once("}}").unwrap().1;
                serde_json::Value::String(format!("{prefix}{n}{suffix}"))
            }
            None => data.clone(),
        },
        serde_json::Value::Object(map) => {
            serde_json::Value::Object(map.iter().map(|(k, v)| (k.clone(), fill(v, n))).collect())
        }
        other => other.clone(),
    }
}

/// The script's defaults: `SESSIONS="${SESSIONS:-N}"` and `PREFIX="..."`.
fn script_sessions() -> BTreeSet<String> {
    let script = std::fs::read_to_string(ghz_dir().join("create_sessions.sh")).unwrap();
    let value = |var: &str| {
        script
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{var}=")))
            .unwrap_or_else(|| panic!("create_sessions.sh sets {var}="))
            .trim_matches('"')
            .to_string()
    };
    let sessions = value("SESSIONS");
    let count: u32 = sessions
        .strip_prefix("${SESSIONS:-")
        .and_then(|s| s.strip_suffix('}'))
        .unwrap_or(&sessions)
        .parse()
        .unwrap();
    let prefix = value("PREFIX");
    (0..count).map(|n| format!("{prefix}{n}")).collect()
}

#[test]
fn every_config_names_an_rpc_of_the_proto_with_fields_of_its_request() {
    let proto = proto();
    let configs = configs();
    let names: Vec<&str> = configs.iter().map(|(n, _)| n.as_str()).collect();
    for hot in [
        "server_time.json",
        "get_session.json",
        "switch.json",
        "subscribe.json",
    ] {
        assert!(names.contains(&hot), "ghz/{hot} is missing: {names:?}");
    }
    for (name, c) in &configs {
        let call = c["call"].as_str().unwrap_or_else(|| panic!("{name}: call"));
        let (service, method) = call
            .rsplit_once('.')
            .unwrap_or_else(|| panic!("{name}: call {call:?} is package.Service.Method"));
        assert_eq!(service, "synckairos.v1.SyncService", "{name}");
        let request = proto
            .rpcs
            .iter()
            .find(|(rpc, _)| rpc == method)
            .map(|(_, req)| req)
            .unwrap_or_else(|| panic!("{name}: no rpc {method} in sync.proto"));
        let fields = proto
            .messages
            .iter()
            .find(|(m, _)| m == request)
            .map(|(_, f)| f)
            .unwrap_or_else(|| panic!("{name}: no message {request}"));
        let data = c["data"]
            .as_object()
            .unwrap_or_else(|| panic!("{name}: data"));
        for key in data.keys() {
            assert!(
                fields.contains(key),
                "{name}: {key} is not a field of {request} ({fields:?})"
            );
        }
        let proto_file = ghz_dir().join(c["proto"].as_str().expect("proto"));
        assert!(proto_file.is_file(), "{name}: {}", proto_file.display());
        for dir in c["import-paths"].as_array().expect("import-paths") {
            let dir = ghz_dir().join(dir.as_str().unwrap());
            assert!(dir.is_dir(), "{name}: {}", dir.display());
            assert!(
                proto_file.starts_with(&dir),
                "{name}: the proto is under its import path"
            );
        }
        assert!(
            c["host"].is_string() && c["insecure"] == true,
            "{name}: host"
        );
        if method == "Subscribe" {
            assert!(
                c["stream-call-duration"].is_string() || c["stream-call-count"].is_u64(),
                "{name}: a Subscribe call never ends by itself: stream-call-duration or -count"
            );
        }
    }
}

#[test]
fn the_sessions_the_templates_pick_are_the_ones_the_script_creates() {
    let created = script_sessions();
    assert_eq!(created.len(), 1000, "{created:?}");
    for (name, c) in configs() {
        let Some(id) = c["data"].get("session_id") else {
            continue;
        };
        let picked: BTreeSet<String> = template_values(id.as_str().unwrap()).into_iter().collect();
        assert_eq!(
            picked, created,
            "{name}: the session ids it can send are not the ones create_sessions.sh makes"
        );
    }
}

#[tokio::test]
async fn the_script_creates_running_sessions_and_each_config_is_a_valid_request() {
    let script = ghz_dir().join("create_sessions.sh");
    let syntax = std::process::Command::new("bash")
        .arg("-n")
        .arg(&script)
        .output()
        .unwrap();
    assert!(syntax.status.success(), "bash -n: {}", text(&syntax.stderr));

    let mut app = spawn_app().await;
    let target = app.addr.to_string();
    let grpcurl_bin = grpcurl_path();
    let run = tokio::task::spawn_blocking(move || {
        std::process::Command::new("bash")
            .arg(script)
            .env("TARGET", target)
            .env("SESSIONS", "5")
            .env("GRPCURL", grpcurl_bin)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(
        run.status.success(),
        "create_sessions.sh: {}{}",
        text(&run.stdout),
        text(&run.stderr)
    );
    for n in 0..5 {
        let s = get(&mut app.client, &format!("ghz-{n}")).await;
        assert_eq!(
            status_of(&s),
            synckairos::grpc::pb::Status::Running,
            "ghz-{n}"
        );
    }

    // Each config's data, filled in as ghz would, is the request it names.
    for (name, c) in configs() {
        let method = c["call"].as_str().unwrap().replacen(
            "synckairos.v1.SyncService.",
            "synckairos.v1.SyncService/",
            1,
        );
        let body = fill(&c["data"], 3).to_string();
        let streaming = method.ends_with("/Subscribe");
        let mut args = vec!["-d", body.as_str()];
        if streaming {
            args.push("-max-time=2");
        }
        args.push(method.as_str());
        let out = grpcurl(app.addr, &args).await;
        let stdout = text(&out.stdout);
        if streaming {
            // It streams until grpcurl gives up; the snapshot came first.
            assert!(
                stdout.contains("EVENT_TYPE_SNAPSHOT") && stdout.contains("ghz-3"),
                "{name}: {stdout}{}",
                text(&out.stderr)
            );
        } else {
            assert!(
                out.status.success(),
                "{name}: grpcurl -d {body} {method}: {stdout}{}",
                text(&out.stderr)
            );
        }
    }
}
