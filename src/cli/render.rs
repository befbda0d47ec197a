//! What `mandate` prints: every reply as text, or as JSON with `--json`, and
//! the writing of stdout itself (a reader gone away ends the output, not the
//! command).

use std::sync::atomic::{AtomicBool, Ordering};

use chrono::{DateTime, Local, Utc};
use serde::Serialize;

use super::exit::Failure;
use crate::domain::{Cause, Decision, DenyReason, MandateId, Outcome, Scope, Tree};
use crate::engine::RebuildReport;
use crate::protocol::{
    ChainReply, CommandResult, Health, HistoryReply, ListReply, MandateSummary, Signal,
    StatusReply, TreeReply, VerifyReply,
};

/// Set once stdout can no longer be written (its reader has gone away).
static STDOUT_GONE: AtomicBool = AtomicBool::new(false);

/// Whether stdout's reader has gone away: a command that would only go on
/// printing (`watch`) stops.
pub(super) fn stdout_gone() -> bool {
    STDOUT_GONE.load(Ordering::Relaxed)
}

/// Writes one line on stdout; see `say!`.
pub(crate) fn say_line(args: std::fmt::Arguments<'_>) {
    use std::io::Write;
    if STDOUT_GONE.load(Ordering::Relaxed) {
        return;
    }
    let mut out = std::io::stdout().lock();
    if let Err(e) = out.write_fmt(args).and_then(|()| out.write_all(b"\n")) {
        STDOUT_GONE.store(true, Ordering::Relaxed);
        if e.kind() != std::io::ErrorKind::BrokenPipe {
            eprintln!("error: cannot write to stdout: {e}");
        }
    }
}

/// What an administrator may do about a quarantined tree.
const RESOLVE_HINT: &str = "(an administrator may `restore` or `seal` it)";

/// A reply as `mandate` prints it without `--json`.
pub(super) trait Text {
    fn text(&self);
}

/// Prints `reply`: as JSON with `--json`, else as text.
pub(super) fn show<T: Serialize + Text>(reply: &T, json: bool) -> Result<(), Failure> {
    if json {
        say!("{}", serde_json::to_string_pretty(reply)?);
    } else {
        reply.text();
    }
    Ok(())
}

/// A moment in local time, with its UTC time of day.
pub(crate) fn local_and_utc(t: DateTime<Utc>) -> String {
    format!(
        "{} ({} UTC)",
        t.with_timezone(&Local).format("%Y-%m-%d %H:%M:%S %Z"),
        t.format("%H:%M:%S")
    )
}

/// A scope's grants, comma-separated.
pub(crate) fn grants_text(scope: &Scope) -> String {
    scope
        .grants()
        .iter()
        .map(|g| g.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// `itself` when the cause is `mandate`'s own, else `ancestor <id>`.
fn whose(cause: MandateId, mandate: Option<MandateId>) -> String {
    if Some(cause) == mandate {
        "itself".to_string()
    } else {
        format!("ancestor {cause}")
    }
}

/// `: itself revoked (reason)` or `: ancestor <id> completed (reason)`: which
/// mandate of the chain made `mandate` what it is, and why; empty without a
/// cause.
pub(super) fn cause_text(cause: Option<&Cause>, mandate: Option<MandateId>) -> String {
    let Some(c) = cause else {
        return String::new();
    };
    format!(
        ": {} {}{}",
        whose(c.mandate, mandate),
        c.status,
        c.reason
            .as_ref()
            .map(|r| format!(" ({r})"))
            .unwrap_or_default()
    )
}

/// A decision's reason in words, e.g. `mandate is completed: ancestor <id>
/// completed (mission jira:FIN-42 completed)`; `--json` keeps the structure.
pub(crate) fn deny_text(d: &Decision) -> String {
    match &d.reason {
        None if d.outcome == Outcome::NeedsApproval => format!(
            "in scope, but needs step-up approval first ({})",
            d.approval
                .iter()
                .map(|p| p.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
        None => "allowed".into(),
        Some(DenyReason::UnknownMandate) => {
            format!("mandate {} not found in tenant {}", d.mandate, d.tenant)
        }
        Some(DenyReason::NotActive { status, cause }) => format!(
            "mandate is {status}{}",
            cause_text(cause.as_ref(), Some(d.mandate))
        ),
        Some(DenyReason::OutOfScope { mandate }) => format!(
            "{} on {} is outside the scope of {}",
            d.action,
            d.resource,
            if *mandate == d.mandate {
                format!("mandate {mandate}")
            } else {
                format!("ancestor {mandate}")
            }
        ),
        Some(DenyReason::InvalidRequest { reason }) => format!("invalid request: {reason}"),
        Some(DenyReason::Unverified { reason }) => {
            format!("state could not be confirmed: {reason}")
        }
        Some(DenyReason::Quarantined { tree, position }) => {
            format!("tree {tree} is quarantined at log position {position} {RESOLVE_HINT}")
        }
        Some(DenyReason::UnsupportedVersion {
            tree,
            position,
            version,
            supported,
        }) => format!(
            "tree {tree} holds an event of schema version {version} at log position {position}; this instance reads up to version {supported}: ask a newer one"
        ),
        Some(DenyReason::LogWentBackwards { tree, recorded, found }) => format!(
            "the event log lost records of tree {tree} (recorded head {recorded}, log head {found}): held until an operator accepts the loss"
        ),
    }
}

impl Text for CommandResult {
    fn text(&self) {
        if let Some(m) = self.mandate {
            say!("mandate {m}");
        }
        let again = if self.duplicate {
            " [already applied]"
        } else {
            ""
        };
        for c in &self.commits {
            for e in &c.events {
                say!(
                    "  {} #{} {} (position {}){again}",
                    e.body.type_name(),
                    e.seq,
                    e.body.mandate(),
                    c.position,
                );
            }
        }
        if self.commits.is_empty() {
            say!("nothing to do");
        }
    }
}

impl Text for Decision {
    fn text(&self) {
        let verdict = match self.outcome {
            Outcome::Allow => "ALLOW",
            Outcome::Deny => "DENY",
            Outcome::NeedsApproval => "NEEDS APPROVAL",
        };
        say!(
            "{verdict}: {} on {} under mandate {} at {}",
            self.action,
            self.resource,
            self.mandate,
            local_and_utc(self.at)
        );
        if self.reason.is_some() {
            say!("reason: {}", deny_text(self));
        }
        for (i, l) in self.chain.iter().enumerate() {
            say!(
                "{:indent$}{} → agent {} (on behalf of {}; own status {})",
                "",
                l.grantor,
                l.grantee,
                l.on_behalf_of,
                l.status,
                indent = 2 + 2 * i
            );
        }
    }
}

impl Text for StatusReply {
    fn text(&self) {
        let m = &self.mandate;
        say!("mandate   {}", m.id);
        say!(
            "grantee   agent {} (granted by {}, on behalf of {})",
            m.grantee,
            m.grantor,
            m.principal
        );
        say!("own       {}", m.status);
        say!("effective {}", self.effective.status);
        if let Some(c) = &self.effective.cause {
            say!(
                "cause     {} {} at {}{}",
                whose(c.mandate, Some(m.id)),
                c.status,
                local_and_utc(c.at),
                c.reason
                    .as_ref()
                    .map(|r| format!(": {r}"))
                    .unwrap_or_default()
            );
        }
        say!("not after {}", local_and_utc(m.not_after));
        say!("scope     {}", grants_text(&m.scope));
    }
}

impl Text for ChainReply {
    fn text(&self) {
        say!("tree      {}", self.tree);
        say!(
            "effective {}{}",
            self.effective.status,
            cause_text(
                self.effective.cause.as_ref(),
                self.chain.last().map(|l| l.mandate)
            )
        );
        say!("at        {}", local_and_utc(self.at));
        for (i, l) in self.chain.iter().enumerate() {
            say!(
                "{:indent$}{} {} → agent {} (on behalf of {}; own status {}; until {}) {}",
                "",
                l.mandate,
                l.grantor,
                l.grantee,
                l.on_behalf_of,
                l.status,
                local_and_utc(l.not_after),
                grants_text(&l.scope),
                indent = 2 * i
            );
        }
    }
}

impl Text for TreeReply {
    fn text(&self) {
        if let Some(m) = &self.tree.mission {
            say!(
                "mission: {}{}",
                m.purpose,
                m.mission_ref
                    .as_ref()
                    .map(|r| format!(" [{r}]"))
                    .unwrap_or_default()
            );
        }
        if let Some(root) = self.tree.root {
            draw(&self.tree, &self.effective, root, "", None);
        }
    }
}

/// Draws mandate `id` and the subtree below it: `last` is `None` for the
/// root, else whether `id` is its parent's last child.
fn draw(tree: &Tree, eff: &[MandateSummary], id: MandateId, prefix: &str, last: Option<bool>) {
    let Some(m) = tree.mandates.get(&id) else {
        return;
    };
    let status = eff
        .iter()
        .find(|s| s.mandate == id)
        .map(|s| s.effective.status.to_string())
        .unwrap_or_default();
    let (branch, below) = match last {
        None => ("", String::new()),
        Some(true) => ("└─ ", format!("{prefix}   ")),
        Some(false) => ("├─ ", format!("{prefix}│  ")),
    };
    say!(
        "{prefix}{branch}{} agent {} [{status}] {}",
        m.id,
        m.grantee,
        grants_text(&m.scope)
    );
    for (i, c) in m.children.iter().enumerate() {
        draw(tree, eff, *c, &below, Some(i + 1 == m.children.len()));
    }
}

impl Text for HistoryReply {
    fn text(&self) {
        for e in &self.events {
            say!(
                "#{:<3} {}  {:<18} mandate {}  by {} on behalf of principal {}",
                e.seq,
                local_and_utc(e.time),
                e.body.type_name(),
                e.body.mandate(),
                e.actor,
                e.on_behalf_of
            );
        }
        if let Some(q) = &self.quarantine {
            say!(
                "QUARANTINED at log position {}: {} {RESOLVE_HINT}",
                q.position,
                q.reason
            );
        }
    }
}

impl Text for VerifyReply {
    fn text(&self) {
        if self.intact {
            say!(
                "tree {}: {} events, hash chain intact",
                self.tree,
                self.events
            );
            for position in &self.skipped {
                say!("  record at log position {position}: bad, kept as evidence, skipped by an administrator's resolution");
            }
            return;
        }
        let fault = self
            .fault
            .and_then(|f| serde_json::to_value(f).ok())
            .and_then(|f| f.as_str().map(str::to_string))
            .unwrap_or_default();
        say!(
            "tree {}: BROKEN at log position {} (event seq {}, {fault}): {}",
            self.tree,
            self.broken_position.unwrap_or_default(),
            self.broken_at.unwrap_or_default(),
            self.reason.clone().unwrap_or_default()
        );
    }
}

impl Text for ListReply {
    fn text(&self) {
        for m in &self.mandates {
            say!(
                "{}  agent {:<16} {:<9} (own {})  until {}",
                m.mandate,
                m.grantee,
                m.effective.status,
                m.status,
                local_and_utc(m.not_after)
            );
        }
    }
}

impl Text for Health {
    fn text(&self) {
        say!("instance  {} ({})", self.instance, self.backend);
        say!(
            "position  {} of {} in the log (lag {})",
            self.position,
            self.log_position,
            self.lag
        );
        say!("time      {}", local_and_utc(self.time));
        say!(
            "rejected mission completions: {}",
            self.rejected_mission_completions
        );
        let e = &self.elections;
        if e.append_retries + e.unavailable > 0 {
            say!(
                "stream leader elections: {} appends sent again, {} unavailable (last {})",
                e.append_retries,
                e.unavailable,
                e.last_at.map_or_else(|| "unknown".into(), local_and_utc)
            );
        }
        if self.quarantined.is_empty() {
            say!("quarantined trees: none");
        }
        for q in &self.quarantined {
            say!(
                "QUARANTINED tree {} at log position {}: {} {RESOLVE_HINT}",
                q.tree,
                q.position,
                q.reason
            );
        }
        for l in &self.log_went_backwards {
            say!(
                "LOG WENT BACKWARDS on tree {}: recorded head {}, log head {} (held; an operator may `rebuild --accept-log-loss`)",
                l.tree, l.recorded, l.found
            );
        }
    }
}

/// One signal `watch` heard: a line of text, or one line of JSON.
pub(super) fn signal(s: &Signal, json: bool) -> Result<(), Failure> {
    if json {
        say!("{}", serde_json::to_string(s)?);
        return Ok(());
    }
    say!(
        "{}  {:?} mandate {} → {} ({}) by {}{}",
        local_and_utc(s.time),
        s.kind,
        s.mandate,
        s.status,
        s.event_type,
        s.actor,
        s.reason
            .as_ref()
            .map(|r| format!(": {r}"))
            .unwrap_or_default()
    );
    Ok(())
}

/// What `rebuild` found, after `secs` seconds.
pub(super) fn rebuild(report: &RebuildReport, secs: f64, json: bool) {
    if json {
        say!(
            "{}",
            serde_json::json!({"records": report.records, "equal": report.equal, "seconds": secs})
        );
        return;
    }
    say!(
        "rebuilt {} log records in {secs:.3}s; projection {}",
        report.records,
        if report.equal {
            "matches the rebuild"
        } else {
            "DIFFERS from the rebuild"
        }
    );
}
