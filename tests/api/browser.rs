//! Issue 16: the web clock (`examples/web-clock`) in a real browser. Headless
//! Chromium from Debian (`/usr/bin/chromium`, or `$CHROMIUM`), driven by
//! Playwright (`playwright-core`) from `examples/web-clock/test/browser.mjs`,
//! against two real replicas of the binary on one private redis-server, with
//! keys (an admin key for this side, player tokens for the page) and
//! `SYNCKAIROS_CORS_ORIGINS` set to the page's origin. The page talks to
//! replica A over gRPC-Web; every change this side makes goes through replica
//! B, so the page sees it through Redis Pub/Sub, as a player sees the other
//! player's move.
//!
//! The script asks this side for what needs the servers (a line protocol
//! over its stdin and stdout, described at the top of the script): create,
//! start, read and switch sessions, and kill replica A (SIGKILL) mid-game,
//! make changes through B while it is down and start it again on the same
//! port. It reports each assertion as a `CHECK` line; this test fails unless
//! the script exits 0, no check failed and every check in [`EXPECTED`] was
//! reported passed (a script that skipped one fails too). It prints the
//! figures (switch -> repaint p50/p99 over 100 switches, the page's clock
//! offset, the server's flag lateness) and saves screenshots to
//! `<target dir>/browser/clock.png` and `flag.png`.
//!
//! It runs its scenario in the redis pass of tests/run.sh only
//! (`SYNCKAIROS_TEST_ENGINE=redis`; the memory pass says so and returns):
//! the restart needs the session to live on in Redis. Run it alone with
//!
//!   SYNCKAIROS_TEST_ENGINE=redis cargo test --test api browser -- --nocapture
//!
//! It needs Chromium (`apt-get install -y chromium`) and the example's npm
//! packages (`npm --prefix examples/web-clock ci`); tests/run.sh installs
//! both when missing. Without them it fails saying so: it never passes
//! without running. It builds the page itself (`npm run build`: buf
//! generate, tsc, esbuild), so it always tests the page of this checkout.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prost_types::Timestamp;
use serde_json::{Value, json};
use synckairos::config::EngineKind;
use synckairos::grpc::pb;

use crate::auth::{ADMIN, authed, keys_toml, token};
use crate::child::{ChildReplica, free_port};
use crate::helpers::{Client, exclusive_isolation, test_engine, unique_id};
use crate::redis_server::RedisServer;

/// Every check the script must report passed.
const EXPECTED: &[&str] = &[
    "bad_params_shown",
    "bad_server_param_shown",
    "empty_token_shown",
    "garbage_token_shown",
    "not_synckairos_shown",
    "unreachable_server_shown",
    "times_match_server",
    "digits_match_data",
    "white_to_move_first",
    "button_switches_turn",
    "remote_switch_flips_within_100ms",
    "space_bar_switches_turn",
    "bench_every_switch_drawn",
    "bench_p99_under_1s",
    "restart_page_caught_up",
    "restart_resubscribed_with_from_version",
    "restart_received_every_missed_event",
    "restart_drew_every_missed_version",
    "restart_final_state_matches",
    "no_version_skipped_on_the_stream",
    "times_match_server_after_restart",
    "screenshot_saved",
    "watch_token_has_no_button",
    "overtime_periods_shown",
    "flag_shown",
    "zero_without_a_flag_while_the_server_is_silent",
    "flag_not_before_the_server",
    "flag_drawn_within_100ms",
    "flagged_clock_shows_zero",
    "canadian_overtime_shown",
    "canadian_stone_played",
];

/// The whole browser run may take this long (the script has its own 240 s limit).
const LIMIT: Duration = Duration::from_secs(300);

fn example_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/web-clock")
}

/// `<target dir>/browser`: the screenshots and the replicas' logs.
fn out_dir() -> PathBuf {
    let tmp = Path::new(env!("CARGO_TARGET_TMPDIR"));
    tmp.parent().unwrap_or(tmp).join("browser")
}

fn ms(t: &Option<Timestamp>) -> Option<f64> {
    t.as_ref()
        .map(|t| t.seconds as f64 * 1000.0 + t.nanos as f64 / 1e6)
}

fn now_ms() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
        * 1000.0
}

/// A session as the script reads it: each clock at the session's `server_time`.
fn state(s: &pb::Session) -> Value {
    let running = s.status == pb::Status::Running as i32;
    let clocks: serde_json::Map<String, Value> = s
        .participants
        .iter()
        .map(|p| {
            (
                p.participant_id.clone(),
                json!({
                    "remaining_ms": p.remaining_ms,
                    "running": running && p.participant_id == s.active_participant_id && !p.expired,
                    "expired": p.expired,
                    "in_overtime": p.in_overtime,
                    "periods_left": p.periods_left,
                    "stones_left": p.stones_left,
                }),
            )
        })
        .collect();
    json!({
        "version": s.version,
        "epoch": s.epoch,
        "status": pb::Status::try_from(s.status).map(|x| x.as_str_name()).unwrap_or("?"),
        "active": s.active_participant_id,
        "server_time_ms": ms(&s.server_time),
        "deadline_ms": ms(&s.deadline_at),
        "clocks": clocks,
    })
}

/// This side of the line protocol: the servers, and what the script may ask of them.
struct Servers {
    /// Replica A, the page's; `None` while it is down.
    a: Option<ChildReplica>,
    a_addr: SocketAddr,
    env: Vec<(&'static str, String)>,
    /// Replica B: every change this side makes.
    b: Client,
    b_pid: u32,
}

/// The node script, killed if the test panics before it exits (Chromium,
/// its child over a pipe, exits with it).
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if self.0.try_wait().ok().flatten().is_none() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

fn signal(sig: &str, pids: &[String]) {
    let ok = Command::new("kill")
        .arg(sig)
        .args(pids)
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "kill {sig} {pids:?} failed");
}

impl Servers {
    async fn answer(&mut self, verb: &str, arg: &Value) -> Result<Value, String> {
        let session = arg["session"].as_str().unwrap_or_default().to_owned();
        match verb {
            "session" => self.session(arg["kind"].as_str().unwrap_or_default()).await,
            "start" => {
                let s = self.start(&session).await?;
                Ok(
                    json!({"version": s.version, "server_time_ms": ms(&s.server_time), "deadline_ms": ms(&s.deadline_at)}),
                )
            }
            "get" => Ok(state(&self.get(&session).await?)),
            "switch" => {
                let from = arg["from"].as_str().map(str::to_owned);
                let s = self.switch(&session, from).await?;
                let answered = now_ms();
                Ok(json!({
                    "version": s.version,
                    "active": s.active_participant_id,
                    "server_time_ms": ms(&s.server_time),
                    "answered_ms": answered,
                }))
            }
            "restart" => self.restart(&session).await,
            "freeze" => {
                // SIGSTOP both replicas from `at_ms` (epoch ms) for `for_ms`:
                // nobody can fire the flag meanwhile, so a page that shows a
                // flag before the server says so is caught showing it.
                let at = arg["at_ms"].as_f64().unwrap_or_default();
                let hold = Duration::from_millis(arg["for_ms"].as_u64().unwrap_or(1000));
                let wait = (at - now_ms()).max(0.0);
                tokio::time::sleep(Duration::from_secs_f64(wait / 1000.0)).await;
                let pids = [self.a.as_ref().map(|a| a.pid()), Some(self.b_pid)];
                let pids: Vec<String> = pids.into_iter().flatten().map(|p| p.to_string()).collect();
                signal("-STOP", &pids);
                tokio::time::sleep(hold).await;
                signal("-CONT", &pids);
                Ok(json!({"stopped_ms": hold.as_millis() as u64}))
            }
            other => Err(format!("unknown verb {other:?}")),
        }
    }

    async fn start(&mut self, id: &str) -> Result<pb::Session, String> {
        let req = pb::StartSessionRequest {
            session_id: id.to_owned(),
            ..Default::default()
        };
        Ok(self
            .b
            .start_session(authed(req, Some(ADMIN)))
            .await
            .map_err(|e| e.to_string())?
            .into_inner())
    }

    async fn get(&mut self, id: &str) -> Result<pb::Session, String> {
        let req = pb::GetSessionRequest {
            session_id: id.to_owned(),
        };
        Ok(self
            .b
            .get_session(authed(req, Some(ADMIN)))
            .await
            .map_err(|e| e.to_string())?
            .into_inner())
    }

    async fn switch(&mut self, id: &str, from: Option<String>) -> Result<pb::Session, String> {
        let req = pb::SwitchCycleRequest {
            session_id: id.to_owned(),
            from_participant_id: from,
            request_id: unique_id("browser-switch"),
            ..Default::default()
        };
        Ok(self
            .b
            .switch_cycle(authed(req, Some(ADMIN)))
            .await
            .map_err(|e| e.to_string())?
            .into_inner())
    }

    /// A session of `kind` with white and black, and tokens for the page.
    async fn session(&mut self, kind: &str) -> Result<Value, String> {
        let id = unique_id(&format!("web-{kind}"));
        let (initial, tc) = match kind {
            // 5 + 2 blitz, started: white's clock runs.
            "chess" => (
                300_000,
                pb::TimeControl {
                    increment_ms: 2_000,
                    ..Default::default()
                },
            ),
            // One second of main time, then two byo-yomi periods of 600 ms: white flags 2.2 s after the start.
            "flag" => (
                1_000,
                pb::TimeControl {
                    byoyomi_periods: 2,
                    byoyomi_period_ms: 600,
                    ..Default::default()
                },
            ),
            // 300 ms of main time, then 3 stones in 20 s.
            "canadian" => (
                300,
                pb::TimeControl {
                    canadian_stones: 3,
                    canadian_block_ms: 20_000,
                    ..Default::default()
                },
            ),
            other => return Err(format!("unknown session kind {other:?}")),
        };
        let req = pb::CreateSessionRequest {
            session_id: id.clone(),
            mode: pb::Mode::PerParticipant as i32,
            initial_time_ms: initial,
            time_control: Some(tc),
            participants: ["white", "black"]
                .into_iter()
                .map(|p| pb::ParticipantSpec {
                    participant_id: p.into(),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        };
        let created = self
            .b
            .create_session(authed(req, Some(ADMIN)))
            .await
            .map_err(|e| e.to_string())?
            .into_inner();
        if kind == "chess" {
            self.start(&id).await?;
        }
        Ok(json!({
            "session": id,
            "epoch": created.epoch,
            "play_token": token(&id, "play", Some("white")),
            "watch_token": token(&id, "watch", None),
        }))
    }

    /// Kills replica A (SIGKILL) while the page follows the session through
    /// it, makes four changes through B meanwhile, and starts A again on the
    /// same port.
    async fn restart(&mut self, id: &str) -> Result<Value, String> {
        let before = self.get(id).await?.version;
        self.a.take().expect("replica A is running").kill();
        tokio::time::sleep(Duration::from_millis(300)).await;
        let mut missed = Vec::new();
        for step in 0..4 {
            let s = if step == 2 {
                let req = pb::AdjustTimeRequest {
                    session_id: id.to_owned(),
                    participant_id: "black".into(),
                    delta_ms: 5_000,
                    ..Default::default()
                };
                self.b
                    .adjust_time(authed(req, Some(ADMIN)))
                    .await
                    .map_err(|e| e.to_string())?
                    .into_inner()
            } else {
                self.switch(id, None).await?
            };
            missed.push(s.version);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let log = out_dir().join("replica-a-restarted.log");
        let (a, _, _) = ChildReplica::spawn_at(self.a_addr, &self.env, Some(&log)).await;
        self.a = Some(a);
        let final_state = state(&self.get(id).await?);
        Ok(json!({"before_version": before, "missed": missed, "final": final_state}))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_web_clock_draws_the_servers_clocks_in_chromium() {
    if test_engine() != EngineKind::Redis {
        println!(
            "browser: runs in the redis pass only (SYNCKAIROS_TEST_ENGINE=redis): the restart needs the session to live on in Redis"
        );
        return;
    }
    let _alone = exclusive_isolation();
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    assert!(
        Path::new(&chromium).exists(),
        "browser test: no Chromium at {chromium}: install Debian's (`apt-get install -y chromium`; tests/run.sh does) or set CHROMIUM"
    );
    let dir = example_dir();
    assert!(
        dir.join("node_modules/playwright-core").exists(),
        "browser test: the web clock's npm packages are missing: `npm --prefix examples/web-clock ci` (tests/run.sh does)"
    );
    let built = Command::new("npm")
        .args(["run", "build", "--silent"])
        .current_dir(&dir)
        .status()
        .expect("npm on PATH (the web clock is built with npm)");
    assert!(
        built.success(),
        "`npm run build` of examples/web-clock failed"
    );
    let out = out_dir();
    std::fs::create_dir_all(&out).unwrap();
    for f in ["clock.png", "flag.png"] {
        let _ = std::fs::remove_file(out.join(f));
    }

    let redis = RedisServer::start();
    let page_port = free_port();
    let env: Vec<(&'static str, String)> = vec![
        ("SYNCKAIROS_ENGINE", "redis".into()),
        ("REDIS_URL", redis.url()),
        (
            "SYNCKAIROS_CORS_ORIGINS",
            format!("http://127.0.0.1:{page_port}"),
        ),
        ("SYNCKAIROS_API_KEYS", keys_toml()),
    ];
    let (a, _, a_addr) = ChildReplica::spawn_logged(&env, Some(&out.join("replica-a.log"))).await;
    let (b_child, _, b_addr) =
        ChildReplica::spawn_logged(&env, Some(&out.join("replica-b.log"))).await;
    let b = crate::helpers::connect(
        tonic::transport::Endpoint::from_shared(format!("http://{b_addr}")).unwrap(),
    )
    .await;
    let mut servers = Servers {
        a: Some(a),
        a_addr,
        env,
        b,
        b_pid: b_child.pid(),
    };

    let script = Command::new("node")
        .arg("test/browser.mjs")
        .current_dir(&dir)
        .env("WEB_CLOCK_PORT", page_port.to_string())
        .env("SK_SERVER", format!("http://{a_addr}"))
        .env(
            "SK_DEAD_SERVER",
            format!("http://127.0.0.1:{}", free_port()),
        )
        .env("SK_OUT", &out)
        .env("CHROMIUM", &chromium)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("node on PATH");
    let mut script = KillOnDrop(script);
    let mut to_script = script.0.stdin.take().unwrap();
    let from_script = script.0.stdout.take().unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(from_script).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });

    let mut passed = BTreeSet::new();
    let mut failed = Vec::new();
    let mut screenshots = Vec::new();
    let run = async {
        while let Some(line) = rx.recv().await {
            if let Some(need) = line.strip_prefix("NEED ") {
                let (verb, arg) = need.split_once(' ').unwrap_or((need, "{}"));
                let arg: Value = serde_json::from_str(arg).unwrap_or(Value::Null);
                let reply = servers
                    .answer(verb, &arg)
                    .await
                    .unwrap_or_else(|e| json!({ "error": e }));
                writeln!(to_script, "{reply}").expect("write to the script");
                to_script.flush().unwrap();
                continue;
            }
            if line.starts_with("FIGURE ") || line.starts_with("SCREENSHOT ") {
                // Straight to stderr, past the test harness's capture: the
                // figures and the screenshot's path show in tests/run.sh's
                // output too, not only under --nocapture.
                let _ = writeln!(std::io::stderr().lock(), "browser: {line}");
            } else {
                println!("browser: {line}");
            }
            if let Some(rest) = line.strip_prefix("CHECK ok ") {
                passed.insert(rest.split(' ').next().unwrap_or_default().to_owned());
            } else if let Some(rest) = line.strip_prefix("CHECK FAIL ") {
                failed.push(rest.to_owned());
            } else if let Some(path) = line.strip_prefix("SCREENSHOT ") {
                screenshots.push(PathBuf::from(path));
            }
        }
    };
    if tokio::time::timeout(LIMIT, run).await.is_err() {
        panic!("browser test: the script did not finish within {LIMIT:?}");
    }
    let status = script.0.wait().expect("the script's exit status");

    assert!(
        failed.is_empty(),
        "browser checks failed:\n  {}",
        failed.join("\n  ")
    );
    let missing: Vec<_> = EXPECTED.iter().filter(|c| !passed.contains(**c)).collect();
    assert!(
        missing.is_empty(),
        "browser checks never reported passed: {missing:?}"
    );
    assert!(status.success(), "the browser script exited with {status}");
    for shot in &screenshots {
        let size = std::fs::metadata(shot).map(|m| m.len()).unwrap_or(0);
        assert!(
            size > 1000,
            "screenshot {} is missing or empty",
            shot.display()
        );
        println!("browser: screenshot saved to {}", shot.display());
    }
    assert!(
        screenshots.iter().any(|s| s.ends_with("clock.png")),
        "no clock screenshot"
    );
}
