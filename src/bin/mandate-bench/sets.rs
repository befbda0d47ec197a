//! `sets`: how long after a revoke a Security Event Token is on
//! `mandate.set.<tenant>` for identity providers and gateways, against the
//! guards' own signal on `mandate.sig.<tenant>.<mandate>` for the same
//! revoke, both timed from sending the command in the same round. The SET is
//! made from the stored signal by the engine's shared consumer of the signal
//! stream, signed, and stored in its own stream; the ratio is what that
//! costs. No target: a receiver's window, told in the README.

use std::time::{Duration, Instant};

use futures::StreamExt;
use mandate::client::Client;

use crate::gen;
use crate::harness::{progress, BenchResult, Env, Served};
use crate::report::{Printer, Row, Samples};

pub struct Sizes {
    /// Roots issued and revoked, one SET each.
    pub revokes: usize,
}

pub async fn run(env: &Env, sizes: &Sizes, out: &Printer) -> BenchResult<()> {
    const S: &str = "sets";
    let served = Served::start(env, &env.dir("engine")).await?;
    let nc = env.connect().await?;
    let tenant = gen::tenant();
    let mut signals = nc.subscribe(format!("mandate.sig.{tenant}.*")).await?;
    let mut sets = nc
        .subscribe(mandate::protocol::set::set_subject(&tenant))
        .await?;
    nc.flush().await?;
    let principal = Client::nats(nc.clone(), tenant.clone(), gen::principal());
    progress(&format!(
        "sets: {} roots revoked, one at a time",
        sizes.revokes
    ));
    let (mut to_signal, mut to_set) = (Samples::default(), Samples::default());
    for n in 0..sizes.revokes {
        let issue = match gen::issue("lead", 1, gen::root_scope(), &format!("bench:sets-{n}"))? {
            mandate::domain::Command::Issue(i) => i,
            _ => unreachable!("gen::issue builds an issue"),
        };
        let root = principal
            .issue(issue)
            .await?
            .mandate
            .ok_or("an issue names its mandate")?;
        let name = root.to_string();
        let t = Instant::now();
        principal.revoke(root, None).await?;
        // The signal of this revoke (beacons and others' signals pass by),
        // then its SET, whose claims name the mandate.
        next_such(&mut signals, "signal", |m| {
            m.subject.as_str().ends_with(&name)
        })
        .await?;
        to_signal.push(t.elapsed());
        next_such(&mut sets, "SET", |m| names(&m.payload, &name)).await?;
        to_set.push(t.elapsed());
    }
    let size = "one root at a time, engine with a token key";
    for (row, value, base) in [
        ("revoke to SET p50", to_set.p50_us(), to_signal.p50_us()),
        ("revoke to SET p99", to_set.p99_us(), to_signal.p99_us()),
    ] {
        out.print(
            &Row::new(S, row, value, Some(base), "us", to_set.len(), size)
                .note("baseline: the same revoke's signal to guards; no target"),
        );
    }
    served.stop().await
}

/// Waits for the next message of `sub` that `such` accepts.
async fn next_such(
    sub: &mut async_nats::Subscriber,
    what: &str,
    such: impl Fn(&async_nats::Message) -> bool,
) -> BenchResult<()> {
    loop {
        let m = tokio::time::timeout(Duration::from_secs(30), sub.next())
            .await
            .map_err(|_| format!("no {what} within 30 s of a revoke"))?
            .ok_or_else(|| format!("the {what} subscription ended"))?;
        if such(&m) {
            return Ok(());
        }
    }
}

/// Whether the SET `jws` is about mandate `name`.
fn names(jws: &[u8], name: &str) -> bool {
    use base64::Engine as _;
    let Some(claims) = jws.split(|b| *b == b'.').nth(1) else {
        return false;
    };
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(claims)
        .ok()
        .and_then(|c| serde_json::from_slice::<serde_json::Value>(&c).ok())
        .is_some_and(|c| c["mandate"]["id"] == name)
}
