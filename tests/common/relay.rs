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
    /// Bytes whose passage toward the server severs every connection once,
    /// and whether the relay then refuses new ones until [`Relay::restore`].
    cut_after: Arc<std::sync::Mutex<Option<Cut>>>,
    /// Bytes whose passage toward the client is dropped, with every
    /// connection, once.
    lose: Arc<std::sync::Mutex<Option<Vec<u8>>>>,
}

/// The bytes a cut waits for, and whether the relay then stays closed.
type Cut = (Vec<u8>, bool);

impl Relay {
    pub async fn start(target_port: u16) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let open = Arc::new(AtomicBool::new(true));
        let generation = Arc::new(tokio::sync::watch::channel(0u64).0);
        let cut_after: Arc<std::sync::Mutex<Option<Cut>>> = Arc::default();
        let lose: Arc<std::sync::Mutex<Option<Vec<u8>>>> = Arc::default();
        let (o, g, c, l) = (
            open.clone(),
            generation.clone(),
            cut_after.clone(),
            lose.clone(),
        );
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
                let (g, c, o, l) = (g.clone(), c.clone(), o.clone(), l.clone());
                tokio::spawn(async move {
                    let Ok(outbound) = TcpStream::connect(("127.0.0.1", target_port)).await else {
                        return;
                    };
                    let (mut ri, mut wi) = inbound.into_split();
                    let (mut ro, mut wo) = outbound.into_split();
                    let toward_server = async {
                        use tokio::io::{AsyncReadExt, AsyncWriteExt};
                        let mut buf = vec![0u8; 64 * 1024];
                        // The end of what passed before, so that a needle
                        // split across two reads is found too.
                        let mut seen: Vec<u8> = Vec::new();
                        loop {
                            let n = match ri.read(&mut buf).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => n,
                            };
                            if wo.write_all(&buf[..n]).await.is_err() {
                                return;
                            }
                            seen.extend_from_slice(&buf[..n]);
                            let hit = {
                                let mut needle = c.lock().unwrap();
                                let hit = needle.as_ref().and_then(|(k, refuse)| {
                                    seen.windows(k.len()).any(|w| w == k).then_some(*refuse)
                                });
                                let keep = needle.as_ref().map_or(0, |(k, _)| k.len());
                                let drop_to = seen.len().saturating_sub(keep);
                                seen.drain(..drop_to);
                                if hit.is_some() {
                                    *needle = None;
                                }
                                hit
                            };
                            if let Some(refuse) = hit {
                                let _ = wo.flush().await;
                                if refuse {
                                    o.store(false, Ordering::SeqCst);
                                }
                                g.send_modify(|g| *g += 1);
                                return;
                            }
                        }
                    };
                    let toward_client = async {
                        use tokio::io::{AsyncReadExt, AsyncWriteExt};
                        let mut buf = vec![0u8; 64 * 1024];
                        loop {
                            let n = match ro.read(&mut buf).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => n,
                            };
                            let lost = {
                                let mut needle = l.lock().unwrap();
                                let hit = needle
                                    .as_ref()
                                    .is_some_and(|k| buf[..n].windows(k.len()).any(|w| w == k));
                                if hit {
                                    *needle = None;
                                }
                                hit
                            };
                            if lost {
                                g.send_modify(|g| *g += 1);
                                return;
                            }
                            if wi.write_all(&buf[..n]).await.is_err() {
                                return;
                            }
                        }
                    };
                    tokio::select! {
                        _ = toward_server => {}
                        _ = toward_client => {}
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
            lose,
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
        *self.cut_after.lock().unwrap() = Some((needle.to_vec(), false));
    }

    /// As [`Relay::cut_after`], but the relay then refuses new connections
    /// until [`Relay::restore`], as [`Relay::sever`] does: nothing the
    /// clients send again reaches the server before the test allows it.
    pub fn sever_after(&self, needle: &[u8]) {
        *self.cut_after.lock().unwrap() = Some((needle.to_vec(), true));
    }

    /// The next read from the server holding `needle` is not passed on,
    /// and every connection is dropped with it, once: the server counts it
    /// delivered, and the client never sees it. New connections are carried
    /// as before.
    pub fn lose_toward_client(&self, needle: &[u8]) {
        *self.lose.lock().unwrap() = Some(needle.to_vec());
    }

    pub fn restore(&self) {
        self.open.store(true, Ordering::SeqCst);
    }
}

/// What a [`RouteRelay`] does with the bytes it carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Passage {
    /// Forwards both ways.
    Open,
    /// Keeps every connection open and accepts new ones, but forwards
    /// nothing either way (what it reads is dropped): neither end sees a
    /// close, as across a network that lost its packets. Leaving it closes
    /// the connections it held (their streams lost bytes), and the ends
    /// connect again.
    Blackhole,
    /// Closes every connection and refuses new ones (closes them at once).
    Severed,
}

/// A TCP relay in front of one node's route port, for one other node's
/// routes to it: the test controls the [`Passage`] of every connection it
/// carries, to partition a cluster without stopping a server.
pub struct RouteRelay {
    port: u16,
    passage: Arc<tokio::sync::watch::Sender<Passage>>,
}

impl RouteRelay {
    /// Listens on a free loopback port, forwarding to `target_port`.
    pub async fn start(target_port: u16) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let passage = Arc::new(tokio::sync::watch::channel(Passage::Open).0);
        let p = passage.clone();
        tokio::spawn(async move {
            loop {
                let Ok((inbound, _)) = listener.accept().await else {
                    return;
                };
                let watch = p.subscribe();
                tokio::spawn(carry(inbound, target_port, watch));
            }
        });
        Self { port, passage }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn set(&self, passage: Passage) {
        self.passage.send_replace(passage);
    }

    pub fn passage(&self) -> Passage {
        *self.passage.borrow()
    }
}

/// One connection through a [`RouteRelay`], until the passage ends it.
async fn carry(
    inbound: TcpStream,
    target_port: u16,
    mut watch: tokio::sync::watch::Receiver<Passage>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let at_start = *watch.borrow_and_update();
    let (mut ri, mut wi) = inbound.into_split();
    match at_start {
        Passage::Severed => return,
        Passage::Blackhole => {
            // Held open, read and dropped, never connected onward.
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                tokio::select! {
                    r = ri.read(&mut buf) => if matches!(r, Ok(0) | Err(_)) { return },
                    c = watch.changed() => if c.is_err() || *watch.borrow_and_update() != Passage::Blackhole { return },
                }
            }
        }
        Passage::Open => {}
    }
    let Ok(outbound) = TcpStream::connect(("127.0.0.1", target_port)).await else {
        return;
    };
    let (mut ro, mut wo) = outbound.into_split();
    let mut to_target = vec![0u8; 64 * 1024];
    let mut to_source = vec![0u8; 64 * 1024];
    let mut passage = *watch.borrow_and_update();
    let mut lost_bytes = false;
    loop {
        tokio::select! {
            r = ri.read(&mut to_target) => {
                let n = match r { Ok(0) | Err(_) => return, Ok(n) => n };
                if passage == Passage::Open {
                    if wo.write_all(&to_target[..n]).await.is_err() { return }
                } else {
                    lost_bytes = true;
                }
            }
            r = ro.read(&mut to_source) => {
                let n = match r { Ok(0) | Err(_) => return, Ok(n) => n };
                if passage == Passage::Open {
                    if wi.write_all(&to_source[..n]).await.is_err() { return }
                } else {
                    lost_bytes = true;
                }
            }
            c = watch.changed() => {
                if c.is_err() { return }
                passage = *watch.borrow_and_update();
                match passage {
                    Passage::Severed => return,
                    // A stream that lost bytes cannot be parsed on: closed,
                    // and the ends connect again.
                    Passage::Open if lost_bytes => return,
                    Passage::Open | Passage::Blackhole => {}
                }
            }
        }
    }
}
