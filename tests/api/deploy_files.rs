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
