//! A TCP relay to a nats-server that a test can sever and restore, to cut
//! one connection off without stopping the server or the engine.
#![allow(dead_code)]

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tokio::net::{TcpListener, TcpStream};

/// Forwards connections to the server's port while open; [`Relay::sever`]
/// drops every connection it carries and refuses new ones until
/// [`Relay::restore`].
pub struct Relay {
    port: u16,
    open: Arc<AtomicBool>,
    generation: Arc<tokio::sync::watch::Sender<u64>>,
    /// Bytes whose passage toward the server severs every connection once.
    cut_after: Arc<std::sync::Mutex<Option<Vec<u8>>>>,
}

impl Relay {
    pub async fn start(target_port: u16) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let open = Arc::new(AtomicBool::new(true));
        let generation = Arc::new(tokio::sync::watch::channel(0u64).0);
        let cut_after: Arc<std::sync::Mutex<Option<Vec<u8>>>> = Arc::default();
        let (o, g, c) = (open.clone(), generation.clone(), cut_after.clone());
        tokio::spawn(async move {
            loop {
                let Ok((inbound, _)) = listener.accept().await else {
                    return;
                };
                if !o.load(Ordering::SeqCst) {
                    drop(inbound);
                    continue;
                }
                let mut cut = g.subscribe();
                let (g, c) = (g.clone(), c.clone());
                tokio::spawn(async move {
                    let Ok(outbound) = TcpStream::connect(("127.0.0.1", target_port)).await else {
                        return;
                    };
                    let (mut ri, mut wi) = inbound.into_split();
                    let (mut ro, mut wo) = outbound.into_split();
                    let toward_server = async {
                        use tokio::io::{AsyncReadExt, AsyncWriteExt};
                        let mut buf = vec![0u8; 64 * 1024];
                        loop {
                            let n = match ri.read(&mut buf).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => n,
                            };
                            if wo.write_all(&buf[..n]).await.is_err() {
                                return;
                            }
                            let hit = {
                                let mut needle = c.lock().unwrap();
                                let hit = needle
                                    .as_ref()
                                    .is_some_and(|k| buf[..n].windows(k.len()).any(|w| w == k));
                                if hit {
                                    *needle = None;
                                }
                                hit
                            };
                            if hit {
                                let _ = wo.flush().await;
                                g.send_modify(|g| *g += 1);
                                return;
                            }
                        }
                    };
                    tokio::select! {
                        _ = toward_server => {}
                        _ = tokio::io::copy(&mut ro, &mut wi) => {}
                        _ = cut.changed() => {}
                    }
                });
            }
        });
        Self {
            port,
            open,
            generation,
            cut_after,
        }
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    pub fn sever(&self) {
        self.open.store(false, Ordering::SeqCst);
        self.generation.send_modify(|g| *g += 1);
    }

    /// Once `needle` has passed toward the server (in one read), every
    /// connection is dropped, once: what was sent arrives, and whatever the
    /// server sends back on those connections is lost. New connections are
    /// carried as before.
    pub fn cut_after(&self, needle: &[u8]) {
        *self.cut_after.lock().unwrap() = Some(needle.to_vec());
    }

    pub fn restore(&self) {
        self.open.store(true, Ordering::SeqCst);
    }
}
