//! The deploy files, read as their tools would read them: what hadolint
//! (tests/run.sh) cannot see in the Dockerfile, railway.toml, the compose
//! file, and the metric names the alerts and the dashboard use (against the
//! runbook's table, and against a scrape of a running server).
//! Docker cannot run on these machines, so nothing here builds the image.

use std::path::{Path, PathBuf};

use synckairos::config::Config;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(repo().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

// ---------- Dockerfile ----------

/// One instruction of a Dockerfile: its stage (0 = the first FROM), its
/// keyword (upper case) and its arguments, continuation lines joined.
#[derive(Debug, Clone)]
struct Instruction {
    stage: usize,
    keyword: String,
    args: String,
}

fn dockerfile() -> Vec<Instruction> {
    let text = read("Dockerfile");
    let mut out = Vec::new();
    let mut stage = None::<usize>;
    let mut pending = String::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if pending.is_empty() && (trimmed.is_empty() || trimmed.starts_with('#')) {
            continue;
        }
        if !pending.is_empty() && trimmed.starts_with('#') {
            continue; // a comment inside a continued instruction
        }
        if let Some(head) = trimmed.strip_suffix('\\') {
            pending.push_str(head);
            pending.push(' ');
            continue;
        }
        pending.push_str(trimmed);
        let full = std::mem::take(&mut pending);
        let (keyword, args) = full.split_once(char::is_whitespace).unwrap_or((&full, ""));
        let keyword = keyword.to_ascii_uppercase();
        if keyword == "FROM" {
            stage = Some(stage.map_or(0, |s| s + 1));
        }
        out.push(Instruction {
            stage: stage.unwrap_or(0),
            keyword,
            args: args.trim().to_string(),
        });
    }
    assert!(
        pending.is_empty(),
        "Dockerfile ends inside a continued line"
    );
    out
}

/// The final stage's instructions (what the image runs).
fn final_stage(all: &[Instruction]) -> Vec<Instruction> {
    let last = all.iter().map(|i| i.stage).max().expect("a FROM");
    all.iter().filter(|i| i.stage == last).cloned().collect()
}

fn exec_form(args: &str, what: &str) -> Vec<String> {
    serde_json::from_str(args)
        .unwrap_or_else(|e| panic!("{what} must be in exec form (a JSON array): {args:?}: {e}"))
}

/// Cargo.toml's [[bin]] names.
fn cargo_bins() -> Vec<String> {
    let manifest: toml::Table = toml::from_str(&read("Cargo.toml")).expect("Cargo.toml parses");
    manifest
        .get("bin")
        .and_then(|b| b.as_array())
        .expect("Cargo.toml has [[bin]]")
        .iter()
        .filter_map(|b| b.get("name").and_then(|n| n.as_str()).map(String::from))
        .collect()
}

#[test]
fn the_image_runs_the_crates_binary_as_a_non_root_user() {
    let stage = final_stage(&dockerfile());
    let entrypoint: Vec<_> = stage.iter().filter(|i| i.keyword == "ENTRYPOINT").collect();
    assert_eq!(entrypoint.len(), 1, "one ENTRYPOINT in the final stage");
    let entry = exec_form(&entrypoint[0].args, "ENTRYPOINT");
    let binary = Path::new(&entry[0]);
    let name = binary.file_name().unwrap().to_str().unwrap();
    assert_eq!(
        cargo_bins().first().map(String::as_str),
        Some(name),
        "ENTRYPOINT {entry:?} runs Cargo.toml's first [[bin]]"
    );
    // The binary is copied from the build stage to exactly that path.
    assert!(
        stage.iter().any(|i| i.keyword == "COPY"
            && i.args.starts_with("--from=")
            && i.args.ends_with(&entry[0])),
        "a COPY --from=... puts the binary at {}",
        entry[0]
    );
    // The last USER is not root, by name or number.
    let user = stage
        .iter()
        .rfind(|i| i.keyword == "USER")
        .expect("the final stage sets USER");
    let who = user.args.split(':').next().unwrap();
    assert!(
        who != "root" && who != "0" && !who.is_empty(),
        "USER {} runs as root",
        user.args
    );
    assert!(
        stage
            .iter()
            .any(|i| i.keyword == "STOPSIGNAL" && i.args == "SIGTERM"),
        "STOPSIGNAL SIGTERM (the signal the server drains on)"
    );
}

#[test]
fn the_healthcheck_is_the_binarys_own_healthcheck_command() {
    let stage = final_stage(&dockerfile());
    let checks: Vec<_> = stage
        .iter()
        .filter(|i| i.keyword == "HEALTHCHECK")
        .collect();
    assert_eq!(checks.len(), 1, "one HEALTHCHECK in the final stage");
    let args = &checks[0].args;
    let (options, cmd) = args.split_once("CMD").expect("HEALTHCHECK ... CMD [...]");
    let cmd = exec_form(cmd.trim(), "HEALTHCHECK CMD");
    let entry = stage
        .iter()
        .find(|i| i.keyword == "ENTRYPOINT")
        .map(|i| exec_form(&i.args, "ENTRYPOINT"))
        .unwrap();
    assert_eq!(cmd[0], entry[0], "the probe is the image's own binary");
    assert_eq!(cmd.get(1).map(String::as_str), Some("healthcheck"));
    // Docker's timeout leaves room for the probe's own (2 s by default).
    let option = |name: &str| {
        options
            .split_whitespace()
            .find_map(|o| o.strip_prefix(&format!("--{name}=")))
            .and_then(synckairos::config::parse_duration)
            .unwrap_or_else(|| panic!("HEALTHCHECK --{name}=<duration> in {args:?}"))
    };
    assert!(
        option("timeout") > std::time::Duration::from_secs(2),
        "{args}"
    );
    assert!(option("interval") >= option("timeout"), "{args}");
    option("start-period");
}

#[test]
fn no_package_version_is_pinned_and_every_build_input_is_copied() {
    let all = dockerfile();
    for i in all.iter().filter(|i| i.keyword == "RUN") {
        for command in i.args.split("&&") {
            let words: Vec<&str> = command.split_whitespace().collect();
            let Some(at) = words.windows(2).position(|w| {
                matches!(
                    w,
                    ["apt-get", "install"] | ["apt", "install"] | ["apk", "add"]
                )
            }) else {
                continue;
            };
            for word in &words[at + 2..] {
                assert!(
                    word.starts_with('-') || !word.contains('='),
                    "{word:?} pins a package version that the archive will drop: {command:?}"
                );
            }
        }
    }
    // The build stage: the dependency layer, then the sources.
    let build: Vec<_> = all.iter().filter(|i| i.stage == 0).collect();
    let position = |what: &dyn Fn(&Instruction) -> bool, name: &str| {
        build
            .iter()
            .position(|i| what(i))
            .unwrap_or_else(|| panic!("the build stage has {name}"))
    };
    let copies = |path: &'static str| {
        move |i: &Instruction| {
            i.keyword == "COPY" && i.args.split_whitespace().rev().skip(1).any(|p| p == path)
        }
    };
    let first_build = position(
        &|i| i.keyword == "RUN" && i.args.contains("cargo build"),
        "a cargo build",
    );
    let copy_src = position(&copies("src"), "COPY src");
    for input in ["Cargo.toml", "Cargo.lock", "build.rs", "proto"] {
        assert!(
            position(&copies(input), input) < first_build,
            "{input} is copied before the dependency build"
        );
    }
    assert!(
        first_build < copy_src,
        "dependencies build before src/ is copied"
    );
    // embed_migrations!("migrations") needs the folder to build the crate.
    assert!(position(&copies("migrations"), "COPY migrations") < build.len());
    let last_build = build
        .iter()
        .rposition(|i| i.keyword == "RUN" && i.args.contains("cargo build"))
        .unwrap();
    assert!(
        last_build > copy_src,
        "the crate builds after src/ is copied"
    );
    assert!(
        build[last_build]
            .args
            .contains("touch src/main.rs src/lib.rs"),
        "the real sources are touched, or cargo keeps the empty ones' build: {:?}",
        build[last_build].args
    );
    // Every path Cargo.toml builds from is in src/ (copied above).
    let manifest: toml::Table = toml::from_str(&read("Cargo.toml")).unwrap();
    let lib = manifest["lib"]["path"].as_str().unwrap();
    assert!(lib.starts_with("src/"), "{lib}");
    for bin in manifest["bin"].as_array().unwrap() {
        let path = bin["path"].as_str().unwrap();
        assert!(path.starts_with("src/"), "{path}");
    }
}

#[test]
fn the_image_listens_where_the_platform_says() {
    let stage = final_stage(&dockerfile());
    let env: String = stage
        .iter()
        .filter(|i| i.keyword == "ENV")
        .map(|i| i.args.clone())
        .collect::<Vec<_>>()
        .join(" ");
    // SYNCKAIROS_LISTEN set in the image would win over the PORT a platform
    // (Railway) gives the service, and its probes would find nothing there.
    assert!(
        !env.contains("SYNCKAIROS_LISTEN="),
        "the image must leave SYNCKAIROS_LISTEN unset: {env}"
    );
    let exposed: Vec<u16> = stage
        .iter()
        .filter(|i| i.keyword == "EXPOSE")
        .flat_map(|i| i.args.split_whitespace().map(|p| p.parse::<u16>().unwrap()))
        .collect();
    let default_port = Config::default().listen.port();
    assert!(
        exposed.contains(&default_port),
        "EXPOSE {default_port}: {exposed:?}"
    );
    if let Some(metrics) = env
        .split_whitespace()
        .find_map(|kv| kv.strip_prefix("SYNCKAIROS_METRICS_LISTEN="))
    {
        let port: u16 = metrics.rsplit(':').next().unwrap().parse().unwrap();
        assert!(exposed.contains(&port), "EXPOSE the metrics port {port}");
    }
}

// ---------- railway.toml ----------

#[test]
fn railway_checks_ready_and_builds_the_dockerfile() {
    let railway: toml::Table = toml::from_str(&read("railway.toml")).expect("railway.toml parses");
    let deploy = railway["deploy"].as_table().expect("[deploy]");
    assert_eq!(deploy["healthcheckPath"].as_str(), Some("/ready"));
    let timeout = deploy["healthcheckTimeout"]
        .as_integer()
        .expect("healthcheckTimeout (seconds)");
    assert!(timeout > 0);
    let build = railway["build"].as_table().expect("[build]");
    assert_eq!(build["builder"].as_str(), Some("DOCKERFILE"));
    let dockerfile = build["dockerfilePath"].as_str().expect("dockerfilePath");
    assert!(repo().join(dockerfile).is_file(), "{dockerfile} exists");
    // SIGKILL comes drainingSeconds after SIGTERM: after the server's grace.
    let draining = deploy["drainingSeconds"]
        .as_integer()
        .expect("drainingSeconds") as u64;
    assert!(
        draining > Config::default().shutdown_grace.as_secs(),
        "drainingSeconds {draining} must exceed SYNCKAIROS_SHUTDOWN_GRACE's default"
    );
}

// ---------- compose.yaml ----------

/// A YAML file as JSON, parsed by PyYAML: the reference YAML parser, with
/// the merge keys (`<<: *anchor`) compose files use. Python is already a
/// test dependency (grpcio for auth_cross_language); PyYAML costs no Rust
/// build time, where serde_yaml is unmaintained and its forks are young.
/// tests/run.sh installs it when missing.
fn yaml(rel: &str) -> serde_json::Value {
    let path = repo().join(rel);
    let out = std::process::Command::new("python3")
        .args([
            "-c",
            "import json, sys, yaml; json.dump(yaml.safe_load(open(sys.argv[1])), sys.stdout)",
        ])
        .arg(&path)
        .output()
        .expect("python3 (tests/run.sh installs PyYAML: pip install PyYAML)");
    assert!(
        out.status.success(),
        "{rel} does not parse as YAML (or PyYAML is missing: pip install PyYAML): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("JSON from python")
}

/// The variables of the README's configuration table.
fn documented_variables() -> Vec<String> {
    let readme = read("README.md");
    let table = readme
        .split("## Configuration")
        .nth(1)
        .expect("README has a Configuration section");
    table
        .lines()
        .filter(|l| l.starts_with("| `"))
        .flat_map(|l| {
            let first = l.split('|').nth(1).unwrap_or("");
            first
                .split('`')
                .skip(1)
                .step_by(2)
                .map(String::from)
                .collect::<Vec<_>>()
        })
        .collect()
}

fn str_of<'a>(v: &'a serde_json::Value, what: &str) -> &'a str {
    v.as_str()
        .unwrap_or_else(|| panic!("{what} is a string: {v}"))
}

#[test]
fn compose_starts_redis_postgres_and_three_healthy_replicas() {
    let compose = yaml("docs/deploy/compose.yaml");
    let services = compose["services"].as_object().expect("services");
    for dep in ["redis", "postgres"] {
        assert!(
            services[dep]["healthcheck"]["test"].is_array(),
            "{dep} has a healthcheck (the replicas wait for it)"
        );
    }
    let replicas: Vec<(&String, &serde_json::Value)> = services
        .iter()
        .filter(|(_, s)| s.get("build").is_some())
        .collect();
    assert!(
        replicas.len() >= 3,
        "three replicas built from the Dockerfile"
    );
    let entrypoint = final_stage(&dockerfile())
        .iter()
        .find(|i| i.keyword == "ENTRYPOINT")
        .map(|i| exec_form(&i.args, "ENTRYPOINT"))
        .unwrap();
    let documented = documented_variables();
    let postgres_env = &services["postgres"]["environment"];
    let mut host_ports = Vec::new();
    for (name, s) in &replicas {
        let context = repo()
            .join("docs/deploy")
            .join(str_of(&s["build"]["context"], "build.context"));
        let dockerfile = context.join(str_of(&s["build"]["dockerfile"], "build.dockerfile"));
        assert_eq!(
            dockerfile.canonicalize().unwrap(),
            repo().join("Dockerfile").canonicalize().unwrap(),
            "{name} builds the repository's Dockerfile"
        );
        let env = s["environment"].as_object().expect("environment map");
        for var in env.keys() {
            assert!(
                documented.contains(var),
                "{name}: {var} is not in the README's configuration table"
            );
        }
        let redis = str_of(&env["REDIS_URL"], "REDIS_URL");
        assert_eq!(
            redis, "redis://redis:6379",
            "{name} reaches the redis service"
        );
        let db = str_of(&env["DATABASE_URL"], "DATABASE_URL");
        let want = format!(
            "postgres://{}:{}@postgres:5432/{}",
            str_of(&postgres_env["POSTGRES_USER"], "POSTGRES_USER"),
            str_of(&postgres_env["POSTGRES_PASSWORD"], "POSTGRES_PASSWORD"),
            str_of(&postgres_env["POSTGRES_DB"], "POSTGRES_DB"),
        );
        assert_eq!(db, want, "{name} reaches the postgres service's database");
        let metrics = str_of(
            &env["SYNCKAIROS_METRICS_LISTEN"],
            "SYNCKAIROS_METRICS_LISTEN",
        );
        let metrics_port = metrics.rsplit(':').next().unwrap().to_string();
        for dep in ["redis", "postgres"] {
            assert_eq!(
                s["depends_on"][dep]["condition"], "service_healthy",
                "{name} waits for {dep}"
            );
        }
        let test: Vec<&str> = s["healthcheck"]["test"]
            .as_array()
            .expect("healthcheck.test")
            .iter()
            .map(|v| str_of(v, "test"))
            .collect();
        assert_eq!(
            test,
            ["CMD", entrypoint[0].as_str(), "healthcheck"],
            "{name}"
        );
        let grace = synckairos::config::parse_duration(str_of(
            &s["stop_grace_period"],
            "stop_grace_period",
        ))
        .unwrap();
        assert!(
            grace > Config::default().shutdown_grace,
            "{name}: stop_grace_period"
        );
        // gRPC on the default port (no SYNCKAIROS_LISTEN), metrics on theirs.
        let mut inner = Vec::new();
        for p in s["ports"].as_array().expect("ports") {
            let (host, container) = str_of(p, "port").split_once(':').unwrap();
            host_ports.push(host.to_string());
            inner.push(container.to_string());
        }
        assert!(!env.contains_key("SYNCKAIROS_LISTEN"));
        assert!(
            inner.contains(&Config::default().listen.port().to_string()),
            "{name}"
        );
        assert!(
            inner.contains(&metrics_port),
            "{name} publishes its metrics"
        );
    }
    let mut unique = host_ports.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), host_ports.len(), "host ports: {host_ports:?}");

    // The monitoring profile's Prometheus scrapes exactly the replicas.
    let prometheus = yaml("docs/deploy/prometheus.yml");
    let targets: Vec<&str> = prometheus["scrape_configs"][0]["static_configs"][0]["targets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| str_of(t, "target"))
        .collect();
    let mut want: Vec<String> = replicas.iter().map(|(n, _)| format!("{n}:9090")).collect();
    want.sort();
    let mut got: Vec<String> = targets.iter().map(|t| t.to_string()).collect();
    got.sort();
    assert_eq!(got, want);
    assert_eq!(prometheus["rule_files"][0], "alerts.yaml");
}

// ---------- metric names: alerts, dashboard, runbook, a running server ----------

/// The runbook's metrics table (docs/deploy.md, "Metrics"): name -> type.
fn documented_metrics() -> Vec<(String, String)> {
    let doc = read("docs/deploy.md");
    let section = doc
        .split("\n## Metrics\n")
        .nth(1)
        .expect("docs/deploy.md has a Metrics section");
    let section = section.split("\n## ").next().unwrap();
    let rows: Vec<(String, String)> = section
        .lines()
        .filter_map(|l| {
            let cells: Vec<&str> = l.split('|').map(str::trim).collect();
            let name = cells.get(1)?.strip_prefix('`')?.strip_suffix('`')?;
            Some((name.to_string(), cells.get(2)?.to_string()))
        })
        .collect();
    assert!(rows.len() > 20, "the metrics table: {rows:?}");
    rows
}

/// Every `synckairos_*` / `grpc_server_*` identifier in a PromQL expression
/// (the regex `\b(synckairos_[a-z_]+|grpc_server_[a-z_]+)\b`, by hand).
fn metric_names_in(expr: &str) -> Vec<String> {
    let mut out = Vec::new();
    let bytes = expr.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let starts_word = i == 0 || !(bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'_');
        if starts_word && (bytes[i].is_ascii_alphabetic() || bytes[i] == b'_') {
            let mut j = i;
            while j < bytes.len() && (bytes[j].is_ascii_alphanumeric() || bytes[j] == b'_') {
                j += 1;
            }
            let word = &expr[i..j];
            if word.starts_with("synckairos_") || word.starts_with("grpc_server_") {
                out.push(word.to_string());
            }
            i = j;
        } else {
            i += 1;
        }
    }
    out
}

/// A histogram's series name (`x_bucket`, `x_sum`, `x_count`) as its family's.
fn family(name: &str, histograms: &[String]) -> String {
    for suffix in ["_bucket", "_sum", "_count"] {
        if let Some(base) = name.strip_suffix(suffix)
            && histograms.iter().any(|h| h == base)
        {
            return base.to_string();
        }
    }
    name.to_string()
}

/// Every string under a key `expr`, anywhere in a JSON document.
fn exprs(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::Object(map) => {
            for (k, v) in map {
                match (k.as_str(), v) {
                    ("expr", serde_json::Value::String(e)) => out.push(e.clone()),
                    _ => exprs(v, out),
                }
            }
        }
        serde_json::Value::Array(items) => items.iter().for_each(|v| exprs(v, out)),
        _ => {}
    }
}

/// The metric families the alerts and the dashboard use, with where.
fn referenced_metrics() -> Vec<(String, String)> {
    let histograms: Vec<String> = documented_metrics()
        .into_iter()
        .filter(|(_, t)| t == "histogram")
        .map(|(n, _)| n)
        .collect();
    let mut found = Vec::new();
    for (file, doc) in [
        ("docs/deploy/alerts.yaml", yaml("docs/deploy/alerts.yaml")),
        (
            "docs/deploy/grafana-dashboard.json",
            serde_json::from_str(&read("docs/deploy/grafana-dashboard.json"))
                .expect("the dashboard is JSON"),
        ),
    ] {
        let mut all = Vec::new();
        exprs(&doc, &mut all);
        assert!(all.len() > 5, "{file}: expressions found: {all:?}");
        for e in all {
            for name in metric_names_in(&e) {
                found.push((family(&name, &histograms), format!("{file}: {e}")));
            }
        }
    }
    found.sort();
    found.dedup_by(|a, b| a.0 == b.0);
    found
}

#[test]
fn the_name_scanner_finds_metric_names_and_nothing_else() {
    assert_eq!(
        metric_names_in(
            r#"histogram_quantile(0.99, sum by (le, grpc_method) (rate(grpc_server_handling_seconds_bucket{grpc_service="x"}[5m]))) / synckairos_ready"#
        ),
        ["grpc_server_handling_seconds_bucket", "synckairos_ready"]
    );
    assert!(metric_names_in(r#"up{job="synckairos", x="my_synckairos_thing"}"#).is_empty());
}

/// Every expression of the alerts and the dashboard.
fn all_exprs() -> Vec<String> {
    let mut all = Vec::new();
    exprs(&yaml("docs/deploy/alerts.yaml"), &mut all);
    // The rules' unit tests: their input series carry codes too.
    fn strings(v: &serde_json::Value, out: &mut Vec<String>) {
        match v {
            serde_json::Value::String(s) => out.push(s.clone()),
            serde_json::Value::Object(map) => map.values().for_each(|v| strings(v, out)),
            serde_json::Value::Array(items) => items.iter().for_each(|v| strings(v, out)),
            _ => {}
        }
    }
    strings(&yaml("docs/deploy/alerts.test.yaml"), &mut all);
    let dashboard = serde_json::from_str(&read("docs/deploy/grafana-dashboard.json"))
        .expect("the dashboard is JSON");
    exprs(&dashboard, &mut all);
    all
}

/// The `grpc_code` values the server writes: Go's `codes.Code` names, as
/// go-grpc-prometheus does (grpc/observe.rs), not the proto's upper case.
const GRPC_CODES: [&str; 17] = synckairos::grpc::CODE_NAMES;

#[test]
fn alerts_and_dashboard_name_grpc_codes_as_the_server_writes_them() {
    let mut seen = 0;
    for e in all_exprs() {
        let mut rest = e.as_str();
        while let Some(at) = rest.find("grpc_code") {
            rest = &rest[at + "grpc_code".len()..];
            // A matcher (=, !=, =~, !~), not a `by (grpc_code)` or a legend.
            let after = rest.trim_start();
            if !(after.starts_with('=') || after.starts_with('!')) {
                continue;
            }
            let value = after
                .trim_start_matches(['=', '!', '~', ' '])
                .strip_prefix('"')
                .and_then(|v| v.split('"').next())
                .unwrap_or_else(|| panic!("a grpc_code matcher without a value in {e}"));
            for code in value.split('|') {
                seen += 1;
                assert!(
                    GRPC_CODES.contains(&code),
                    "grpc_code {code:?} is not a code the server writes (Go's names: {GRPC_CODES:?}) in {e}"
                );
            }
        }
    }
    assert!(seen >= 3, "grpc_code matchers found: {seen}");
}

#[test]
fn alerts_and_dashboard_use_only_the_documented_metrics() {
    let documented: Vec<String> = documented_metrics().into_iter().map(|(n, _)| n).collect();
    let referenced = referenced_metrics();
    assert!(referenced.len() > 15, "{referenced:?}");
    for (name, at) in &referenced {
        assert!(
            documented.contains(name),
            "{name} is not in docs/deploy.md's Metrics table ({at})"
        );
    }
    // The issue's minimum: each of these is watched by the alerts or drawn.
    for needed in [
        "synckairos_ready",
        "synckairos_audit_lag_seconds",
        "synckairos_timer_flag_lateness_seconds",
        "synckairos_store_redis_errors_total",
        "synckairos_streams_open",
        "grpc_server_handled_total",
        "grpc_server_handling_seconds",
        "synckairos_store_commit_seconds",
        "synckairos_audit_backlog",
        "synckairos_tenant_streams_open",
    ] {
        assert!(
            referenced.iter().any(|(n, _)| n == needed),
            "{needed} is used by neither the alerts nor the dashboard"
        );
    }
}

#[test]
fn every_alert_has_a_runbook_entry() {
    let alerts = yaml("docs/deploy/alerts.yaml");
    let doc = read("docs/deploy.md");
    let mut names = Vec::new();
    for group in alerts["groups"].as_array().expect("groups") {
        for rule in group["rules"].as_array().expect("rules") {
            let Some(name) = rule["alert"].as_str() else {
                continue;
            };
            names.push(name.to_string());
            let runbook = str_of(&rule["annotations"]["runbook"], "annotations.runbook");
            let anchor = runbook
                .strip_prefix("docs/deploy.md#")
                .unwrap_or_else(|| panic!("{name}: runbook {runbook:?} is not docs/deploy.md#..."));
            // GitHub's anchor of a "### Name" heading is its lower-cased name;
            // an alert's entry is its own or its family's (AuditLagCritical:
            // AuditLag's).
            let entry = doc
                .lines()
                .filter_map(|l| l.strip_prefix("### "))
                .find(|h| h.to_lowercase() == anchor)
                .unwrap_or_else(|| panic!("{name}: docs/deploy.md has no heading for #{anchor}"));
            assert!(
                name.starts_with(entry),
                "{name}'s runbook is {entry}'s entry"
            );
            assert!(
                matches!(
                    rule["labels"]["severity"].as_str(),
                    Some("critical" | "warning" | "info")
                ),
                "{name}: severity"
            );
        }
    }
    assert!(names.len() >= 6, "{names:?}");
}

/// GET `http://addr/metrics` (HTTP/1.0: no chunked body to undo).
async fn scrape(addr: std::net::SocketAddr) -> std::io::Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut conn = tokio::net::TcpStream::connect(addr).await?;
    conn.write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .await?;
    let mut body = Vec::new();
    conn.read_to_end(&mut body).await?;
    Ok(String::from_utf8_lossy(&body).into_owned())
}

/// The metric families a scrape shows: sample names (histogram series
/// folded into their family) and the names of `# HELP` / `# TYPE` lines.
fn scraped_families(text: &str, histograms: &[String]) -> Vec<String> {
    let mut out: Vec<String> = text
        .lines()
        .filter_map(|l| {
            let l = l.trim();
            if let Some(meta) = l
                .strip_prefix("# HELP ")
                .or_else(|| l.strip_prefix("# TYPE "))
            {
                return meta.split_whitespace().next().map(String::from);
            }
            if l.is_empty() || l.starts_with('#') {
                return None;
            }
            let name = l.split(['{', ' ']).next()?;
            Some(family(name, histograms))
        })
        .collect();
    out.sort();
    out.dedup();
    out
}

/// Needs main's metrics server on SYNCKAIROS_METRICS_LISTEN (issue 14 item 1):
/// until it lands, nothing listens there and this test fails at the scrape.
/// The server runs every part that has metrics (redis engine, Pub/Sub, timers,
/// audit to a private database) and sees some traffic first (calls of both
/// services, a stream, a flag, a rate-limited create), so labelled series exist.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_server_serves_every_metric_the_alerts_and_dashboard_use() {
    use crate::helpers::*;
    use std::time::{Duration, Instant};
    use synckairos::config::{EngineKind, Rate, Secret};
    use synckairos::grpc::pb;

    let redis = crate::redis_server::RedisServer::start();
    let db = crate::pg::TestDb::create();
    let metrics_addr = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap();
    let (redis_url, db_url) = (redis.url(), db.url());
    let mut app = spawn_app_with(|c| {
        c.engine = EngineKind::Redis;
        c.redis_url = Some(Secret::new(redis_url));
        c.database_url = Some(Secret::new(db_url));
        c.metrics_listen = Some(metrics_addr);
        c.create_rate = Rate::new(1, 2);
    })
    .await;

    let game = create_started(&mut app.client).await;
    let mut stream = subscribe(&mut app.client, subscribe_req(&game.session_id)).await;
    next_event(&mut stream).await;
    switch(&mut app.client, &game.session_id).await;
    next_change(&mut stream).await;
    let flagging = create(&mut app.client, chess(&unique_id("flag"), 200)).await;
    start(&mut app.client, &flagging.session_id).await;
    app.client
        .get_server_time(pb::GetServerTimeRequest {})
        .await
        .unwrap();
    let refused = app
        .client
        .create_session(chess(&unique_id("over"), 60_000))
        .await;
    assert_code(refused, tonic::Code::ResourceExhausted);
    let channel = tonic::transport::Endpoint::from_shared(app.url())
        .unwrap()
        .connect()
        .await
        .unwrap();
    tonic_health::pb::health_client::HealthClient::new(channel)
        .check(tonic_health::pb::HealthCheckRequest::default())
        .await
        .unwrap();
    // The flag falls due 200 ms after the start; wait for it.
    tokio::time::sleep(Duration::from_millis(600)).await;

    let histograms: Vec<String> = documented_metrics()
        .into_iter()
        .filter(|(_, t)| t == "histogram")
        .map(|(n, _)| n)
        .collect();
    let referenced = referenced_metrics();
    let t0 = Instant::now();
    let missing = loop {
        let text = scrape(metrics_addr).await.unwrap_or_else(|e| {
            panic!("no /metrics on SYNCKAIROS_METRICS_LISTEN={metrics_addr}: {e}")
        });
        assert!(text.starts_with("HTTP/1."), "{text:.200}");
        let status = text.split_whitespace().nth(1).unwrap_or("");
        assert_eq!(status, "200", "{text:.300}");
        let served = scraped_families(&text, &histograms);
        let missing: Vec<&(String, String)> = referenced
            .iter()
            .filter(|(name, _)| !served.contains(name))
            .collect();
        if missing.is_empty() || t0.elapsed() > Duration::from_secs(10) {
            break missing;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert!(
        missing.is_empty(),
        "a running server does not serve these metrics the alerts or dashboard use:\n{}",
        missing
            .iter()
            .map(|(n, at)| format!("  {n}  ({at})"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    drop(stream);
}
