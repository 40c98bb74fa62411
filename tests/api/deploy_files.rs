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
