//! ListSessions (issue 15 item 2), on both engines: paged newest first over
//! thousands of sessions while others are created, filtered by status
//! (from the states, as GetSession reads them), never another tenant's,
//! never a deleted or TTL-expired session; page tokens bound to the tenant
//! and the filter; bad arguments named. The Redis engine's listing index is
//! also checked directly: entries of gone sessions are dropped by the
//! listing that meets them and by the sweep each create runs.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use synckairos::config::EngineKind;
use synckairos::grpc::pb;
use tokio::sync::Mutex;
use tonic::{Code, Request, Status};

use crate::auth::{
    ADMIN, KeysFile, OTHER_ADMIN, PLAY, READ, authed, keys_toml, spawn_with_keys, token,
};
use crate::helpers::*;

fn list_req(page_size: u32, page_token: &str, statuses: &[pb::Status]) -> pb::ListSessionsRequest {
    pb::ListSessionsRequest {
        page_size,
        page_token: page_token.into(),
        statuses: statuses.iter().map(|s| *s as i32).collect(),
    }
}

async fn list(
    c: &mut Client,
    req: impl tonic::IntoRequest<pb::ListSessionsRequest>,
) -> Result<pb::ListSessionsResponse, Status> {
    c.list_sessions(req).await.map(|r| r.into_inner())
}

/// Every page of a listing, in order; at most `max_pages` pages.
async fn list_all(
    c: &mut Client,
    page_size: u32,
    statuses: &[pb::Status],
    max_pages: usize,
) -> Vec<pb::Session> {
    let (mut out, mut token) = (Vec::new(), String::new());
    for _ in 0..max_pages {
        let page = list(c, list_req(page_size, &token, statuses))
            .await
            .unwrap();
        out.extend(page.sessions);
        if page.next_page_token.is_empty() {
            return out;
        }
        token = page.next_page_token;
    }
    panic!("the listing did not end within {max_pages} pages");
}

fn ids(sessions: &[pb::Session]) -> Vec<String> {
    sessions.iter().map(|s| s.session_id.clone()).collect()
}

fn id_set(sessions: &[pb::Session]) -> HashSet<String> {
    sessions.iter().map(|s| s.session_id.clone()).collect()
}

/// The listing's order: `(created_at, session_id)`, greatest first.
#[track_caller]
fn assert_newest_first(sessions: &[pb::Session]) {
    let key = |s: &pb::Session| (micros_of(&s.created_at), s.session_id.clone());
    for w in sessions.windows(2) {
        assert!(
            key(&w[0]) > key(&w[1]),
            "not strictly newest first: {:?} then {:?}",
            key(&w[0]),
            key(&w[1])
        );
    }
}

/// `n` sessions made by `workers` clients at once; their ids.
async fn create_many(app: &TestApp, n: usize, workers: usize, prefix: &str) -> Vec<String> {
    let mut tasks = Vec::new();
    for w in 0..workers {
        let mut c = app.new_client().await;
        let prefix = format!("{prefix}{w}");
        let count = n / workers + usize::from(w < n % workers);
        tasks.push(tokio::spawn(async move {
            let mut made = Vec::with_capacity(count);
            for _ in 0..count {
                made.push(
                    create(&mut c, chess(&unique_id(&prefix), HOUR_MS))
                        .await
                        .session_id,
                );
            }
            made
        }));
    }
    let mut all = Vec::with_capacity(n);
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all
}

async fn spawn_unlimited() -> TestApp {
    spawn_app_with(|c| {
        c.create_rate = None;
        c.mutation_rate = None;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paging_over_thousands_while_sessions_are_created_lists_each_earlier_one_exactly_once() {
    let app = spawn_unlimited().await;
    let before: HashSet<String> = create_many(&app, 2_500, 8, "before")
        .await
        .into_iter()
        .collect();
    assert_eq!(before.len(), 2_500);

    // Creates go on while the listing pages.
    let stop = Arc::new(AtomicBool::new(false));
    let during = Arc::new(Mutex::new(Vec::new()));
    let mut creators = Vec::new();
    for w in 0..2 {
        let (stop, during, mut c) = (stop.clone(), during.clone(), app.new_client().await);
        creators.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let id = create(&mut c, chess(&unique_id(&format!("during{w}")), HOUR_MS)).await;
                during.lock().await.push(id.session_id);
            }
        }));
    }
    let mut c = app.new_client().await;
    let (mut listed, mut token, mut pages) = (Vec::new(), String::new(), 0);
    // Page sizes of every kind, the default (0) and the largest included.
    for size in [1, 7, 0, 250, 1000, 37].into_iter().cycle() {
        let page = list(&mut c, list_req(size, &token, &[])).await.unwrap();
        let expected = if size == 0 { 100 } else { size as usize };
        assert!(
            page.sessions.len() <= expected,
            "a page of {size} held {}",
            page.sessions.len()
        );
        listed.extend(page.sessions);
        pages += 1;
        if page.next_page_token.is_empty() {
            break;
        }
        assert!(pages < 200, "the listing does not end");
        token = page.next_page_token;
    }
    stop.store(true, Ordering::Relaxed);
    for t in creators {
        t.await.unwrap();
    }
    let during: HashSet<String> = during.lock().await.iter().cloned().collect();
    assert!(
        !during.is_empty(),
        "sessions were created while the listing paged"
    );

    assert_newest_first(&listed);
    let seen = ids(&listed);
    let unique: HashSet<String> = seen.iter().cloned().collect();
    assert_eq!(unique.len(), seen.len(), "a session was listed twice");
    let missing: Vec<&String> = before.difference(&unique).collect();
    assert!(
        missing.is_empty(),
        "{} earlier sessions skipped, e.g. {:?}",
        missing.len(),
        &missing[..missing.len().min(3)]
    );
    assert!(
        unique
            .iter()
            .all(|id| before.contains(id) || during.contains(id)),
        "only sessions of this tenant that were created are listed"
    );
    println!(
        "{} pages; {} of the {} sessions created meanwhile were listed",
        pages,
        unique.len() - before.len(),
        during.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_status_filter_keeps_only_those_statuses_as_get_session_reads_them() {
    let mut app = spawn_unlimited().await;
    let c = &mut app.client;
    let pending = create_chess(c).await.session_id;
    let running = create_started(c).await.session_id;
    let paused = create_started(c).await.session_id;
    c.pause_session(pb::PauseSessionRequest {
        session_id: paused.clone(),
        ..Default::default()
    })
    .await
    .unwrap();
    let completed = create_started(c).await.session_id;
    c.complete_session(pb::CompleteSessionRequest {
        session_id: completed.clone(),
        ..Default::default()
    })
    .await
    .unwrap();
    let cancelled = create_chess(c).await.session_id;
    c.cancel_session(pb::CancelSessionRequest {
        session_id: cancelled.clone(),
        ..Default::default()
    })
    .await
    .unwrap();
    let set = |ids: &[&String]| ids.iter().map(|s| s.to_string()).collect::<HashSet<_>>();
    use pb::Status as S;

    let all = list_all(c, 0, &[], 5).await;
    assert_eq!(
        id_set(&all),
        set(&[&pending, &running, &paused, &completed, &cancelled])
    );
    assert_eq!(
        ids(&all),
        [&cancelled, &completed, &paused, &running, &pending].map(|s| s.to_string()),
        "newest first"
    );
    // Each as GetSession has it.
    for s in &all {
        let got = get(c, &s.session_id).await;
        assert_eq!(
            (s.status, s.version, &s.epoch),
            (got.status, got.version, &got.epoch)
        );
    }
    let live = list_all(c, 0, &[S::Running, S::Paused], 5).await;
    assert_eq!(id_set(&live), set(&[&running, &paused]));
    assert!(
        live.iter()
            .all(|s| matches!(status_of(s), S::Running | S::Paused))
    );
    // A set: order and repeats do not matter.
    let again = list_all(c, 0, &[S::Paused, S::Running, S::Paused], 5).await;
    assert_eq!(ids(&again), ids(&live));
    assert_eq!(
        id_set(&list_all(c, 0, &[S::Cancelled, S::Completed], 5).await),
        set(&[&cancelled, &completed])
    );
    assert!(list_all(c, 0, &[S::Expired], 5).await.is_empty());

    // A change shows at once, as GetSession shows it.
    start(c, &pending).await;
    assert!(list_all(c, 0, &[S::Pending], 5).await.is_empty());
    assert_eq!(
        id_set(&list_all(c, 0, &[S::Running], 5).await),
        set(&[&running, &pending])
    );
}

/// A filter that matches rarely does not make one call read the whole
/// index: a call examines at most 10 × page_size entries, and says where to
/// go on from (a short, even empty, page with a token).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rare_filter_gives_short_pages_that_go_on_rather_than_reading_everything() {
    let app = spawn_unlimited().await;
    let mut c = app.new_client().await;
    let running = create_started(&mut c).await.session_id;
    create_many(&app, 45, 3, "pending").await;
    let first = list(&mut c, list_req(1, "", &[pb::Status::Running]))
        .await
        .unwrap();
    assert!(
        first.sessions.is_empty(),
        "10 entries examined, all newer and PENDING: {:?}",
        ids(&first.sessions)
    );
    assert!(!first.next_page_token.is_empty(), "and where to go on from");
    let (mut found, mut token, mut calls) = (Vec::new(), first.next_page_token, 1);
    while !token.is_empty() {
        let page = list(&mut c, list_req(1, &token, &[pb::Status::Running]))
            .await
            .unwrap();
        found.extend(ids(&page.sessions));
        token = page.next_page_token;
        calls += 1;
        assert!(calls <= 10, "46 entries, at most 10 a call");
    }
    assert_eq!(found, [running]);
    assert!(calls >= 5, "46 entries at most 10 a call: {calls} calls");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleted_sessions_are_not_listed() {
    let app = spawn_unlimited().await;
    let mut c = app.new_client().await;
    let made = create_many(&app, 12, 2, "del").await;
    for id in &made[..5] {
        c.delete_session(pb::DeleteSessionRequest {
            session_id: id.clone(),
        })
        .await
        .unwrap();
    }
    let listed = list_all(&mut c, 3, &[], 10).await;
    let kept: HashSet<String> = made[5..].iter().cloned().collect();
    assert_eq!(id_set(&listed), kept);
    assert_newest_first(&listed);
    // Recreated under a deleted id: listed once, as the new session.
    let again = create(&mut c, chess(&made[0], HOUR_MS)).await;
    let listed = list_all(&mut c, 0, &[], 5).await;
    assert_eq!(listed.len(), 8);
    assert_eq!(listed[0].session_id, made[0], "the newest");
    assert_eq!(listed[0].epoch, again.epoch);
}

/// `sk:{b}:list:default` of every bucket, ZCARD summed (Redis engine).
async fn index_size(url: &str, buckets: u32) -> u64 {
    let mut con = redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let mut total = 0;
    for b in 0..buckets {
        let n: u64 = redis::cmd("ZCARD")
            .arg(format!("sk:{{{b}}}:list:default"))
            .query_async(&mut con)
            .await
            .unwrap();
        total += n;
    }
    total
}

/// A server whose sessions live `ttl`; its Redis URL on the redis engine.
async fn spawn_short_lived(ttl: Duration, buckets: u32) -> (TestApp, Option<String>) {
    let mut url = None;
    let app = spawn_app_with(|c| {
        c.idle_ttl = ttl;
        c.session_ttl = ttl;
        c.redis_buckets = buckets;
        c.create_rate = None;
        url = c.redis_url.as_ref().map(|u| u.expose().to_owned());
    })
    .await;
    (app, url)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_gone_by_their_ttl_are_never_listed() {
    let ttl = Duration::from_millis(1_000);
    let (mut app, url) = spawn_short_lived(ttl, 16).await;
    let c = &mut app.client;
    let idle = create_chess(c).await.session_id;
    let reborn = create_chess(c).await.session_id;
    let kept = create_chess(c).await.session_id;
    tokio::time::sleep(ttl * 7 / 10).await;
    start(c, &kept).await;
    assert_eq!(list_all(c, 0, &[], 5).await.len(), 3, "not yet");
    // Listed first, before any other call meets the expired sessions.
    tokio::time::sleep(ttl * 5 / 10).await;
    if let Some(url) = &url {
        // Redis expired the state keys; their index entries are still there.
        assert_eq!(index_size(url, 16).await, 3);
    }
    // An expired session's id made again: listed once, as the new one.
    let again = create(c, chess(&reborn, HOUR_MS)).await;
    for statuses in [
        vec![],
        vec![pb::Status::Pending],
        vec![pb::Status::Pending, pb::Status::Running],
    ] {
        let listed = list_all(c, 0, &statuses, 5).await;
        assert!(
            !ids(&listed).contains(&idle),
            "expired {idle} listed under {statuses:?}"
        );
    }
    let listed = list_all(c, 0, &[], 5).await;
    assert_eq!(ids(&listed), [reborn, kept]);
    assert_eq!(listed[0].epoch, again.epoch);
    assert_code(
        c.get_session(pb::GetSessionRequest {
            session_id: idle.clone(),
        })
        .await,
        Code::NotFound,
    );
    if let Some(url) = &url {
        assert_eq!(
            index_size(url, 16).await,
            2,
            "the listing dropped the expired sessions' entries"
        );
    }
}

/// Redis engine: the listing index does not keep entries of expired
/// sessions nobody lists: each create sweeps a few of its tenant's entries
/// in its bucket (one bucket here, so that every create sweeps the same index).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn creates_sweep_the_entries_of_expired_sessions_out_of_the_redis_index() {
    if test_engine() != EngineKind::Redis {
        return;
    }
    let ttl = Duration::from_millis(800);
    let (app, url) = spawn_short_lived(ttl, 1).await;
    let url = url.unwrap();
    create_many(&app, 40, 4, "old").await;
    assert_eq!(index_size(&url, 1).await, 40);
    tokio::time::sleep(ttl + Duration::from_millis(400)).await;
    assert_eq!(
        index_size(&url, 1).await,
        40,
        "expired states, entries left"
    );
    // 4 entries swept per create: 10 creates pass the 40 expired ones.
    let fresh = create_many(&app, 20, 1, "new").await;
    assert_eq!(
        index_size(&url, 1).await,
        20,
        "only the live sessions' entries are left"
    );
    let mut c = app.new_client().await;
    assert_eq!(
        id_set(&list_all(&mut c, 0, &[], 5).await),
        fresh.into_iter().collect()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_tenants_sessions_and_page_tokens_are_never_this_tenants() {
    let file = KeysFile::new(&keys_toml());
    let app = spawn_with_keys(&file).await;
    let mut c = app.new_client().await;
    let mut acme = HashSet::new();
    let mut other = HashSet::new();
    for i in 0..6 {
        let id = unique_id("t");
        let (cred, set) = if i % 2 == 0 {
            (ADMIN, &mut acme)
        } else {
            (OTHER_ADMIN, &mut other)
        };
        c.create_session(authed(chess(&id, HOUR_MS), Some(cred)))
            .await
            .unwrap();
        set.insert(id);
    }
    // One id in both tenants: each lists its own.
    let shared = unique_id("shared");
    for cred in [ADMIN, OTHER_ADMIN] {
        c.create_session(authed(chess(&shared, HOUR_MS), Some(cred)))
            .await
            .unwrap();
    }
    acme.insert(shared.clone());
    other.insert(shared.clone());
    let page = |cred: &str, size: u32, token: &str, statuses: &[pb::Status]| {
        authed(list_req(size, token, statuses), Some(cred))
    };
    for (cred, own) in [
        (ADMIN, &acme),
        (READ, &acme),
        (PLAY, &acme),
        (OTHER_ADMIN, &other),
    ] {
        let (mut seen, mut token) = (HashSet::new(), String::new());
        loop {
            let p = list(&mut c, page(cred, 2, &token, &[])).await.unwrap();
            seen.extend(ids(&p.sessions));
            if p.next_page_token.is_empty() {
                break;
            }
            token = p.next_page_token;
        }
        assert_eq!(&seen, own, "{cred}");
    }
    // acme's token: refused to the other tenant, and to another filter.
    let acme_token = list(&mut c, page(ADMIN, 1, "", &[]))
        .await
        .unwrap()
        .next_page_token;
    assert!(!acme_token.is_empty());
    assert!(
        list(&mut c, page(READ, 1, &acme_token, &[])).await.is_ok(),
        "any key of the tenant"
    );
    for req in [
        page(OTHER_ADMIN, 1, &acme_token, &[]),
        page(ADMIN, 1, &acme_token, &[pb::Status::Pending]),
    ] {
        let s = assert_status(list(&mut c, req).await, Code::InvalidArgument, "page_token");
        assert!(
            s.message()
                .contains("another tenant or another statuses filter"),
            "{s:?}"
        );
    }
    let filtered = list(&mut c, page(ADMIN, 1, "", &[pb::Status::Pending]))
        .await
        .unwrap()
        .next_page_token;
    assert_status(
        list(&mut c, page(ADMIN, 1, &filtered, &[])).await,
        Code::InvalidArgument,
        "page_token",
    );
    assert!(
        list(
            &mut c,
            page(
                ADMIN,
                1,
                &filtered,
                &[pb::Status::Pending, pb::Status::Pending]
            )
        )
        .await
        .is_ok()
    );

    // Who may list: API keys only, not a player token, not nobody.
    let sid = acme.iter().next().unwrap().clone();
    assert_code(
        list(&mut c, Request::new(list_req(1, "", &[]))).await,
        Code::Unauthenticated,
    );
    for t in [
        token(&sid, "watch", None),
        token(&sid, "play", Some("white")),
    ] {
        assert_code(
            list(&mut c, page(&t, 1, "", &[])).await,
            Code::PermissionDenied,
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_arguments_are_invalid_naming_the_field_and_hostile_tokens_never_hurt() {
    let mut app = spawn_unlimited().await;
    let c = &mut app.client;
    for _ in 0..3 {
        create_chess(c).await;
    }
    let raw = |page_size: u32, page_token: &str, statuses: Vec<i32>| pb::ListSessionsRequest {
        page_size,
        page_token: page_token.into(),
        statuses,
    };
    for (req, field) in [
        (raw(1_001, "", vec![]), "page_size"),
        (raw(u32::MAX, "", vec![]), "page_size"),
        (raw(0, "", vec![0]), "statuses[0]"),
        (raw(0, "", vec![2, 7]), "statuses[1]"),
        (raw(0, "", vec![-1]), "statuses[0]"),
        (raw(0, "", vec![i32::MAX]), "statuses[0]"),
    ] {
        assert_status(list(c, req).await, Code::InvalidArgument, field);
    }
    let s = assert_status(
        list(c, raw(0, "", vec![0])).await,
        Code::InvalidArgument,
        "STATUS_UNSPECIFIED",
    );
    assert!(s.message().starts_with("statuses[0]"), "{s:?}");
    assert_status(
        list(c, raw(0, "", vec![9])).await,
        Code::InvalidArgument,
        "unknown value 9",
    );

    let good = list(c, raw(1, "", vec![])).await.unwrap().next_page_token;
    let forged_binding = {
        let text = String::from_utf8(URL_SAFE_NO_PAD.decode(&good).unwrap()).unwrap();
        let (pos, _) = text.rsplit_once(':').unwrap();
        URL_SAFE_NO_PAD.encode(format!("{pos}:0123456789abcdef"))
    };
    let hostile = [
        "garbage".to_owned(),
        "%%%".into(),
        "A".repeat(200_000),
        "a\u{0}b".into(),
        "\u{1b}[2J\r\n".into(),
        "é∂ƒ".into(),
        URL_SAFE_NO_PAD.encode([0xff, 0xfe, 0xfd, 0x00, 0xc3]),
        URL_SAFE_NO_PAD.encode("1:x"),
        URL_SAFE_NO_PAD.encode(format!("-5:x:{}", "0".repeat(16))),
        forged_binding,
        format!("{good}A"),
        good[1..].to_owned(),
        // ListSessionEvents' shape of token.
        URL_SAFE_NO_PAD.encode("0123abcd:4711:0123456789abcdef"),
    ];
    for t in &hostile {
        assert_status(
            list(c, raw(0, t, vec![])).await,
            Code::InvalidArgument,
            "page_token",
        );
    }
    // The server goes on.
    assert_eq!(list_all(c, 2, &[], 5).await.len(), 3);
}

/// The memory engine's listing index, driven directly (no upkeep runs
/// here): an expired session is never listed, and its entry goes when a
/// listing meets it or when the sweep frees it; a deleted one's at once.
#[tokio::test]
async fn the_memory_engines_index_holds_exactly_the_sessions_it_holds() {
    use synckairos::engine::{self, Tenant};
    use synckairos::fanout::Hub;
    use synckairos::store::SessionStore;
    use synckairos::store::clock::Clock;
    use synckairos::store::memory::{MemorySettings, MemoryStore};

    let ttl = Duration::from_millis(200);
    let store = MemoryStore::new(Hub::new(16, 16), Clock::new()).with_settings(MemorySettings {
        session_ttl: ttl,
        idle_ttl: ttl,
        max_sessions: 1_000,
    });
    let tenant = Tenant::default_tenant();
    let make = async |name: &str| {
        let k = store_key(name);
        let new = two_player_session(&k, ["a", "b"], 60_000);
        store
            .create(&k, &|now| engine::create(new.clone(), now))
            .await
            .unwrap();
        k
    };
    for i in 0..3 {
        make(&format!("old-{i}")).await;
    }
    tokio::time::sleep(ttl + Duration::from_millis(50)).await;
    let fresh = make("fresh").await;
    let listed = store.list(&tenant, None, 10).await.unwrap();
    let names: Vec<&str> = listed.sessions.iter().map(|s| s.id.as_str()).collect();
    assert_eq!(names, ["fresh"], "the expired ones are not listed");
    assert_eq!((listed.examined, listed.more), (4, false));
    let again = store.list(&tenant, None, 10).await.unwrap();
    assert_eq!(again.examined, 1, "the listing dropped the expired entries");
    assert_eq!(store.held_sessions(), 1);

    // Expired and swept, nobody listing: gone from the index too.
    for i in 0..3 {
        make(&format!("swept-{i}")).await;
    }
    store.delete(&fresh).await.unwrap();
    assert_eq!(store.list(&tenant, None, 10).await.unwrap().examined, 3);
    tokio::time::sleep(ttl + Duration::from_millis(50)).await;
    assert_eq!(store.sweep(), 3);
    let empty = store.list(&tenant, None, 10).await.unwrap();
    assert_eq!((empty.examined, empty.sessions.len()), (0, 0));
}

/// A page ends once its sessions reach about 2 MiB (at least one a page),
/// so that a page of large sessions stays under a gRPC client's default
/// 4 MiB: 1,000-participant sessions listed 1,000 a page.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_of_large_sessions_stays_under_a_clients_4_mib() {
    let app = spawn_unlimited().await;
    let big = |id: &str| pb::CreateSessionRequest {
        participants: (0..1_000)
            .map(|i| participant(&format!("player-{i:04}")))
            .collect(),
        ..chess(id, HOUR_MS)
    };
    let mut tasks = Vec::new();
    for w in 0..4 {
        let mut c = app.new_client().await;
        tasks.push(tokio::spawn(async move {
            let mut made = Vec::new();
            for _ in 0..40 {
                made.push(
                    create(&mut c, big(&unique_id(&format!("big{w}"))))
                        .await
                        .session_id,
                );
            }
            made
        }));
    }
    let mut made = HashSet::new();
    for t in tasks {
        made.extend(t.await.unwrap());
    }
    let mut c = app.new_client().await;
    let (seen, pages) = pages_under(&mut c, 2 * 1024 * 1024).await;
    assert!(pages >= 2, "160 sessions of about 20 KB: {pages} pages");
    assert_eq!(seen.len(), made.len());
    assert_eq!(seen.into_iter().collect::<HashSet<_>>(), made);
}

/// Lists every session of the tenant 1,000 at most a page, each page's
/// sessions at most `most_bytes` and never none: the ids in the order they
/// came, and how many pages.
async fn pages_under(c: &mut Client, most_bytes: usize) -> (Vec<String>, usize) {
    use prost::Message as _;
    let (mut seen, mut token, mut pages) = (Vec::new(), String::new(), 0);
    loop {
        let page = list(c, list_req(1_000, &token, &[])).await.unwrap();
        let bytes: usize = page.sessions.iter().map(|s| s.encoded_len()).sum();
        assert!(
            bytes <= most_bytes,
            "a page of {bytes} bytes, over {most_bytes}"
        );
        assert!(!page.sessions.is_empty());
        seen.extend(ids(&page.sessions));
        pages += 1;
        if page.next_page_token.is_empty() {
            return (seen, pages);
        }
        token = page.next_page_token;
    }
}

/// `SYNCKAIROS_MAX_PAGE_BYTES` moves where a page ends: at 64 KiB, sessions
/// of 300 participants (about 7 KB each) come a few a page, every one once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_bytes_setting_bounds_each_page() {
    let app = spawn_app_with(|c| {
        c.create_rate = None;
        c.max_page_bytes = 64 * 1024;
    })
    .await;
    let mut c = app.new_client().await;
    let mut made = HashSet::new();
    for _ in 0..30 {
        let mut req = chess(&unique_id("page-bytes"), HOUR_MS);
        req.participants = (0..300)
            .map(|i| participant(&format!("player-{i:04}")))
            .collect();
        made.insert(create(&mut c, req).await.session_id);
    }
    let (seen, pages) = pages_under(&mut c, 64 * 1024).await;
    assert!(pages >= 3, "30 sessions of about 7 KB in {pages} pages");
    assert_eq!(seen.into_iter().collect::<HashSet<_>>(), made);
}

/// The README's grpcurl body, as written there, through reflection and JSON.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readmes_grpcurl_listing_runs() {
    use crate::grpcurl::{grpcurl, text};
    let mut app = spawn_unlimited().await;
    let running = create_started(&mut app.client).await.session_id;
    create_chess(&mut app.client).await;
    let body = r#"{"page_size": 100, "statuses": ["STATUS_RUNNING", "STATUS_PAUSED"]}"#;
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    assert!(readme.contains(body), "the README's body");
    let out = grpcurl(
        app.addr,
        &["-d", body, "synckairos.v1.SyncService/ListSessions"],
    )
    .await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let listed = json["sessions"].as_array().unwrap();
    assert_eq!(listed.len(), 1, "{json}");
    assert_eq!(listed[0]["sessionId"], running.as_str());
}
