//! What `breakdown` asks of Redis with no store in between: row (a'), the
//! commit's command mix on a bare connection, and Redis's own time per commit
//! read from INFO commandstats.

use std::sync::Arc;

use super::Call;

/// Redis `TIME`: seconds and microseconds.
type RedisTime = (i64, i64);

/// Row (a'): the commit's two pipelines (WATCH GET TIME, then MULTI SET XADD
/// PEXPIRE ZADD PUBLISH EXEC) on a bare connection: no engine, no JSON, no pool.
pub fn command_mix(bare: redis::aio::MultiplexedConnection, bare_key: String) -> Call {
    Arc::new(move |_, _| {
        let (mut c, k) = (bare.clone(), bare_key.clone());
        Box::pin(async move {
            let value = vec![b'x'; 600];
            let read: redis::RedisResult<(Option<Vec<u8>>, RedisTime)> = redis::pipe()
                .cmd("WATCH")
                .arg(&k)
                .ignore()
                .cmd("GET")
                .arg(&k)
                .cmd("TIME")
                .query_async(&mut c)
                .await;
            let write: redis::RedisResult<Option<redis::Value>> = redis::pipe()
                .atomic()
                .cmd("SET")
                .arg(&k)
                .arg(&value)
                .arg("PX")
                .arg(60_000)
                .ignore()
                .cmd("XADD")
                .arg(format!("{k}:log"))
                .arg("MAXLEN")
                .arg("~")
                .arg(256)
                .arg("*")
                .arg("e")
                .arg(&value)
                .ignore()
                .cmd("PEXPIRE")
                .arg(format!("{k}:log"))
                .arg(60_000)
                .ignore()
                .cmd("ZADD")
                .arg(format!("{k}:z"))
                .arg(1)
                .arg(&k)
                .ignore()
                .cmd("PUBLISH")
                .arg(format!("{k}:ch"))
                .arg(&value)
                .ignore()
                .query_async(&mut c)
                .await;
            read.is_ok() && write.is_ok()
        })
    })
}

/// Total microseconds and calls Redis has spent in the commit's commands
/// (EXEC's time includes the commands it ran).
pub async fn commit_usec(c: &mut redis::aio::MultiplexedConnection) -> anyhow::Result<(u64, u64)> {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(c)
        .await?;
    let (mut usec, mut execs) = (0u64, 0u64);
    for line in info.lines() {
        let Some((name, rest)) = line
            .strip_prefix("cmdstat_")
            .and_then(|l| l.split_once(':'))
        else {
            continue;
        };
        if !["watch", "get", "time", "multi", "exec"].contains(&name) {
            continue;
        }
        let field = |f: &str| {
            rest.split(',')
                .find_map(|kv| kv.strip_prefix(f))
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
        };
        usec += field("usec=");
        if name == "exec" {
            execs = field("calls=");
        }
    }
    Ok((usec, execs))
}
