//! `switch`: SwitchCycle across N running sessions from `--concurrency`
//! workers, each on its own share of the sessions; one report line.

use std::sync::Arc;

use synckairos::grpc::pb;

use crate::Common;
use crate::shared::{clients, create_running, drive, run_id};

pub async fn run(common: Common, sessions: usize) -> anyhow::Result<()> {
    let clients = clients(&common).await?;
    let run = run_id();
    let ids: Vec<String> = (0..sessions).map(|i| format!("{run}-{i}")).collect();
    create_running(&clients, &ids, 24 * 3600 * 1000).await?;
    let ids = Arc::new(ids);
    let concurrency = common.concurrency;
    let stats = drive(concurrency, common.seconds, move |w, n| {
        let mut c = clients[w % clients.len()].clone();
        // Worker w takes sessions w, w+C, w+2C...: no two workers race on one session.
        let per = (ids.len() / concurrency).max(1);
        let id = ids[(w + (n as usize % per) * concurrency) % ids.len()].clone();
        async move {
            c.switch_cycle(pb::SwitchCycleRequest {
                session_id: id,
                ..Default::default()
            })
            .await
            .is_ok()
        }
    })
    .await;
    stats.report(
        &format!(
            "SwitchCycle x{} over {} sessions",
            common.concurrency, sessions
        ),
        common.seconds,
    );
    Ok(())
}
