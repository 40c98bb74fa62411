//! `time`: GetServerTime from `--concurrency` workers, the transport floor
//! (no session, no store); one report line.

use synckairos::grpc::pb;

use crate::Common;
use crate::shared::{clients, drive};

pub async fn run(common: Common) -> anyhow::Result<()> {
    let clients = clients(&common).await?;
    let stats = drive(common.concurrency, common.seconds, move |w, _| {
        let mut c = clients[w % clients.len()].clone();
        async move { c.get_server_time(pb::GetServerTimeRequest {}).await.is_ok() }
    })
    .await;
    stats.report(
        &format!("GetServerTime x{}", common.concurrency),
        common.seconds,
    );
    Ok(())
}
