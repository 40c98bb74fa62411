//! `breakdown`: where the time of one switch goes, one call in flight. Each
//! row (Redis PING through the store's pool, the store's commit called
//! directly, GetServerTime, SwitchCycle and GetSession over gRPC, the same with
//! the server in this process) is timed in interleaved slices; then the
//! targets that compare the rows' medians are printed as met or missed.

mod redis_direct;

use std::sync::Arc;
use std::time::Duration;

use synckairos::engine::{self, Command, Request, SessionKey, Tenant};
use synckairos::grpc::pb;
use synckairos::store::SessionStore;
use synckairos::store::redis::{RedisSettings, RedisStore};

use crate::Common;
use crate::shared::{Stats, clients, create_running, drive_for, run_id, two_players};

pub async fn run(common: Common, redis_url: String, only: String) -> anyhow::Result<()> {
    let store_url = redis_url.clone();
    let settings = RedisSettings {
        url: redis_url,
        ca: None,
        buckets: 16,
        session_ttl: Duration::from_secs(3600),
        idle_ttl: Duration::from_secs(3600),
        pool_size: 4,
        pool_timeout: Duration::from_millis(250),
        audit: false,
    };
    let store = RedisStore::connect(settings, synckairos::store::clock::Clock::new()).await?;
    let run = run_id();
    let key = SessionKey {
        tenant: Tenant::default_tenant(),
        id: engine::SessionId::parse("id", &format!("{run}-direct"))?,
    };
    let new = two_players(key.id.clone(), 24 * 3600 * 1000)?;
    store
        .create(&key, &|now| engine::create(new.clone(), now))
        .await?;
    let start = Request::new(Command::Start { first: None });
    store.update(&key, synckairos::store::apply(start)).await?;
    // Learn the deadline heads as a replica's timers do, so commits wake
    // other replicas only for an earlier deadline, as they would in service.
    store.claim_due().await?;

    let secs = common.seconds;
    let on = |x: &str| only.is_empty() || only.split(',').any(|o| o == x);
    // Redis's own time per commit, from INFO commandstats around one second of (b) alone.
    let mut info = synckairos::store::redis::client(&store_url, None)?
        .get_multiplexed_async_connection()
        .await?;
    let switch = {
        let (st, k) = (store.clone(), key.clone());
        move |_: usize, _: u64| {
            let (st, k) = (st.clone(), k.clone());
            async move {
                let req = Request::new(Command::Switch {
                    from: None,
                    next: None,
                    lag_ms: None,
                });
                st.update(&k, synckairos::store::apply(req)).await.is_ok()
            }
        }
    };
    let before = redis_direct::commit_usec(&mut info).await?;
    drive_for(1, Duration::ZERO, 1.0, switch.clone()).await;
    let after = redis_direct::commit_usec(&mut info).await?;
    let redis_us =
        after.0.saturating_sub(before.0) as f64 / after.1.saturating_sub(before.1).max(1) as f64;

    let one_conn = Common {
        connections: 1,
        ..common.clone()
    };
    let remote = clients(&one_conn).await?;
    let grpc_id = format!("{run}-grpc");
    create_running(&remote, std::slice::from_ref(&grpc_id), 24 * 3600 * 1000).await?;
    let bare = synckairos::store::redis::client(&store_url, None)?
        .get_multiplexed_async_connection()
        .await?;
    let bare_key = format!("{run}-bare");

    let mut rows: Vec<(&'static str, &'static str, Call)> = Vec::new();
    let st = store.clone();
    rows.push((
        "a",
        "(a) Redis PING through the pool",
        Arc::new(move |_, _| {
            let st = st.clone();
            Box::pin(async move { st.ping().await.is_ok() })
        }),
    ));
    // Two PINGs one after the other: the floor of any commit that needs two
    // round trips (WATCH+GET+TIME, then MULTI..EXEC).
    let st = store.clone();
    rows.push((
        "a2",
        "(a2) two PINGs in a row through the pool",
        Arc::new(move |_, _| {
            let st = st.clone();
            Box::pin(async move { st.ping().await.is_ok() && st.ping().await.is_ok() })
        }),
    ));
    // The commit's two pipelines on a bare connection: no engine, no JSON, no pool.
    rows.push((
        "a'",
        "(a') the commit's Redis command mix, bare client",
        redis_direct::command_mix(bare, bare_key),
    ));
    rows.push((
        "b",
        "(b) store commit (switch) direct",
        Arc::new(move |w, n| Box::pin(switch(w, n))),
    ));
    rows.push(("c", "(c) GetServerTime over gRPC", time_call(&remote[0])));
    rows.push((
        "d",
        "(d) SwitchCycle over gRPC",
        switch_call(&remote[0], grpc_id.clone()),
    ));
    let c0 = remote[0].clone();
    rows.push((
        "e",
        "(e) GetSession over gRPC (one Redis GET)",
        Arc::new(move |_, _| {
            let (mut c, id) = (c0.clone(), grpc_id.clone());
            Box::pin(async move {
                c.get_session(pb::GetSessionRequest { session_id: id })
                    .await
                    .is_ok()
            })
        }),
    ));
    // The same service in this process (its own Redis pool, timers and
    // Pub/Sub, on this runtime): (d) minus (d') is what running client,
    // server and Redis as three processes on this machine's cores costs.
    if on("b'") || on("c'") || on("d'") {
        let config = synckairos::config::Config {
            listen: "127.0.0.1:0".parse()?,
            engine: synckairos::config::EngineKind::Redis,
            redis_url: Some(synckairos::config::Secret::new(store_url.clone())),
            ..synckairos::config::Config::default()
        };
        let server = synckairos::startup::Application::build(config).await?;
        let (addr, app) = (server.local_addr().to_string(), server.app().clone());
        tokio::spawn(server.run_until_stopped(std::future::pending()));
        let local = clients(&Common {
            target: addr,
            connections: 1,
            ..common.clone()
        })
        .await?;
        let local_id = format!("{run}-local");
        create_running(&local, std::slice::from_ref(&local_id), 24 * 3600 * 1000).await?;
        let sid = engine::SessionKey {
            tenant: engine::Tenant::default_tenant(),
            id: engine::SessionId::parse("id", &local_id)?,
        };
        rows.push((
            "b'",
            "(b') App::switch in this process (app layer + store, no gRPC)",
            Arc::new(move |_, _| {
                let (app, sid) = (app.clone(), sid.clone());
                Box::pin(async move {
                    app.switch(sid, None, None, None, Default::default())
                        .await
                        .is_ok()
                })
            }),
        ));
        rows.push((
            "c'",
            "(c') GetServerTime over gRPC, server in this process",
            time_call(&local[0]),
        ));
        rows.push((
            "d'",
            "(d') SwitchCycle over gRPC, server in this process",
            switch_call(&local[0], local_id),
        ));
    }
    rows.retain(|(tag, _, _)| on(tag));

    // Interleaved: every row runs for a short slice in each round, so a noisy
    // second on this shared machine weighs on every row alike.
    let rounds = (secs / 0.5).ceil().max(1.0) as usize;
    let slice = secs / rounds as f64;
    let mut stats: Vec<Stats> = rows.iter().map(|_| Stats::default()).collect();
    for (_, _, call) in &rows {
        let call = call.clone();
        drive_for(1, Duration::ZERO, 0.3, move |w, n| call(w, n)).await; // warm-up
    }
    for _ in 0..rounds {
        for (i, (_, _, call)) in rows.iter().enumerate() {
            let call = call.clone();
            stats[i].merge(drive_for(1, Duration::ZERO, slice, move |w, n| call(w, n)).await);
        }
    }
    let mut p50 = std::collections::HashMap::new();
    for ((tag, label, _), st) in rows.iter().zip(stats) {
        p50.insert(*tag, st.report(label, secs));
    }
    println!(
        "Redis's own time per commit (WATCH GET TIME MULTI EXEC, from INFO commandstats): {redis_us:.1} us"
    );
    let get = |k: &str| p50.get(k).copied();
    if let (Some(a), Some(b)) = (get("a"), get("b")) {
        println!(
            "target (b) <= 2.5 x (a): (b)/(a) = {:.2} ({})",
            b / a,
            if b <= 2.5 * a { "met" } else { "missed" }
        );
    }
    if let (Some(a), Some(a2), Some(x)) = (get("a"), get("a2"), get("a'")) {
        println!(
            "floor of a two-round-trip commit: (a2)/(a) = {:.2}, ((a2) + Redis's own time)/(a) = {:.2}, bare mix (a')/(a) = {:.2}",
            a2 / a,
            (a2 + redis_us / 1000.0) / a,
            x / a
        );
    }
    for (c, d) in [("c", "d"), ("c'", "d'")] {
        if let (Some(b), Some(cv), Some(dv)) = (get("b"), get(c), get(d)) {
            let bound = cv + 1.25 * b;
            let verdict = if dv <= bound { "met" } else { "missed" };
            println!("target ({d}) <= ({c}) + 1.25 x (b): {dv:.3} vs {bound:.3} ms ({verdict})");
        }
    }
    Ok(())
}

/// One timed call of a `breakdown` row.
type Call = Arc<
    dyn Fn(usize, u64) -> std::pin::Pin<Box<dyn std::future::Future<Output = bool> + Send>>
        + Send
        + Sync,
>;

fn time_call(client: &crate::shared::Client) -> Call {
    let client = client.clone();
    Arc::new(move |_, _| {
        let mut c = client.clone();
        Box::pin(async move { c.get_server_time(pb::GetServerTimeRequest {}).await.is_ok() })
    })
}

fn switch_call(client: &crate::shared::Client, id: String) -> Call {
    let client = client.clone();
    Arc::new(move |_, _| {
        let (mut c, id) = (client.clone(), id.clone());
        Box::pin(async move {
            c.switch_cycle(pb::SwitchCycleRequest {
                session_id: id,
                ..Default::default()
            })
            .await
            .is_ok()
        })
    })
}
