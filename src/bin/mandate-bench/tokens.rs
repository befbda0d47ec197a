//! `tokens`: issuing a mandate token over NATS (a `fresh` read of the chain,
//! the signature), one caller, against raw request-reply to a trivial
//! responder in the same run; and checking one, offline
//! (`TokenVerifier::verify`: base64url, JSON, one Ed25519 verification) and
//! with a guard (`verify_with_guard`, no round trip), microseconds per call.
//! Issuing is rare beside checks (once per token lifetime per caller), so
//! its row has no target; the offline check has an absolute one.

use std::time::{Duration, Instant};

use mandate::client::guard::GuardHub;
use mandate::client::{Client, Guard, GuardConfig, TokenVerifier};
use mandate::domain::Actor;
use serde_json::json;

use crate::check::chain_of_three;
use crate::gen;
use crate::harness::{progress, BenchResult, Echo, Env};
use crate::report::{Printer, Row, Samples, Target};

pub struct Sizes {
    pub requests: usize,
    pub calls: usize,
}

pub async fn run(env: &Env, sizes: &Sizes, out: &Printer) -> BenchResult<()> {
    const S: &str = "tokens";
    let target = chain_of_three(env).await?;
    let nc = env.connect().await?;
    let echo = Echo::start(&nc).await?;
    let echo_subject = echo.subject().to_string();
    let leaf = Client::nats(
        nc.clone(),
        gen::tenant(),
        Actor::Agent(gen::agent_id("leaf")?),
    );
    let body = serde_json::to_vec(
        &json!({"mandate": target.leaf, "actor": {"kind": "agent", "id": "leaf"}}),
    )?;
    let subject = format!("mandate.q.{}.token", gen::tenant());
    let first = leaf.token(target.leaf, None, None).await?;
    nc.request(echo_subject.clone(), body.clone().into())
        .await?;

    progress(&format!("tokens: {} issued, one caller", sizes.requests));
    let (mut raw, mut eng) = (Samples::default(), Samples::default());
    for _ in 0..sizes.requests {
        let t = Instant::now();
        nc.request(echo_subject.clone(), body.clone().into())
            .await?;
        raw.push(t.elapsed());
        let t = Instant::now();
        let reply = nc.request(subject.clone(), body.clone().into()).await?;
        eng.push(t.elapsed());
        if !reply.payload.starts_with(br#"{"ok":true"#) {
            return Err(
                format!("token refused: {}", String::from_utf8_lossy(&reply.payload)).into(),
            );
        }
    }
    let size = "chain depth 3, one caller";
    for (row, value, base) in [
        ("issue p50", eng.p50_us(), raw.p50_us()),
        ("issue p99", eng.p99_us(), raw.p99_us()),
    ] {
        out.print(
            &Row::new(S, row, value, Some(base), "us", eng.len(), size)
                .note("fresh read of the chain and an Ed25519 signature; no target"),
        );
    }

    let verifier = TokenVerifier::new(&leaf.jwks().await?)?;
    progress(&format!("tokens: {} offline verifications", sizes.calls));
    let t = Instant::now();
    for _ in 0..sizes.calls {
        std::hint::black_box(verifier.verify(std::hint::black_box(&first.token))?);
    }
    let offline = t.elapsed().as_secs_f64() * 1e6 / sizes.calls as f64;
    out.print(
        &Row::new(
            S,
            "verify offline",
            offline,
            None,
            "us",
            sizes.calls,
            "one token",
        )
        .target(Target::Below(200.0)),
    );
    let guard = Guard::start(
        leaf.clone(),
        &GuardHub::new(),
        target.leaf,
        GuardConfig {
            lease: Duration::from_secs(5),
            ..GuardConfig::default()
        },
    )
    .await?;
    let t = Instant::now();
    for _ in 0..sizes.calls {
        std::hint::black_box(verifier.verify_with_guard(&first.token, &guard)?);
    }
    let guarded = t.elapsed().as_secs_f64() * 1e6 / sizes.calls as f64;
    out.print(&Row::new(
        S,
        "verify with guard",
        guarded,
        Some(offline),
        "us",
        sizes.calls,
        "one token, chain depth 3",
    ));
    drop(guard);
    drop(echo);
    target.served.stop().await
}
