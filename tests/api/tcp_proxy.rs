//! A tiny TCP proxy in front of a test's private Redis, that can be told to
//! black-hole the connections it carries: they stay open (no FIN, no RST),
//! and nothing more goes through them either way — what a NAT or a proxy that
//! lost a flow's state does. Connections made after a black-hole forward
//! normally. The proxy and every connection it holds go away on drop.

use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub struct TcpProxy {
    pub port: u16,
    /// Cancelled to black-hole every connection accepted before.
    current: Arc<Mutex<CancellationToken>>,
    /// Ends the accept loop and every pipe.
    stop: CancellationToken,
    _accept: JoinHandle<()>,
}

impl TcpProxy {
    /// Listens on a free port of 127.0.0.1 and forwards to `upstream_port`.
    pub async fn start(upstream_port: u16) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let port = listener.local_addr().unwrap().port();
        let current = Arc::new(Mutex::new(CancellationToken::new()));
        let stop = CancellationToken::new();
        let accept = tokio::spawn({
            let (current, stop) = (current.clone(), stop.clone());
            async move {
                loop {
                    let client = tokio::select! {
                        _ = stop.cancelled() => return,
                        accepted = listener.accept() => match accepted {
                            Ok((client, _)) => client,
                            Err(_) => continue,
                        },
                    };
                    let hole = current.lock().unwrap().clone();
                    tokio::spawn(pipe(client, upstream_port, hole, stop.clone()));
                }
            }
        });
        TcpProxy {
            port,
            current,
            stop,
            _accept: accept,
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Every connection open now stops forwarding, both ways, and stays open.
    pub fn black_hole(&self) {
        let mut current = self.current.lock().unwrap();
        current.cancel();
        *current = CancellationToken::new();
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Forwards one connection until either side closes, `hole` is cancelled
/// (then it holds both sockets open, forwarding nothing, until `stop`), or
/// `stop`.
async fn pipe(
    client: TcpStream,
    upstream_port: u16,
    hole: CancellationToken,
    stop: CancellationToken,
) {
    let Ok(server) = TcpStream::connect(("127.0.0.1", upstream_port)).await else {
        return;
    };
    let (mut client_rx, mut client_tx) = client.into_split();
    let (mut server_rx, mut server_tx) = server.into_split();
    let forward = async {
        tokio::select! {
            _ = copy(&mut client_rx, &mut server_tx) => {}
            _ = copy(&mut server_rx, &mut client_tx) => {}
        }
    };
    tokio::select! {
        _ = stop.cancelled() => return,
        _ = forward => return,
        _ = hole.cancelled() => {}
    }
    // Black-holed: the halves are still owned here, so both sockets stay open.
    stop.cancelled().await;
    drop((client_rx, client_tx, server_rx, server_tx));
}

async fn copy(from: &mut tokio::net::tcp::OwnedReadHalf, to: &mut tokio::net::tcp::OwnedWriteHalf) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if to.write_all(&buf[..n]).await.is_err() {
                    return;
                }
            }
        }
    }
}
