//! Argument values into domain values: actors, durations, ids, grants. Every
//! refusal is invalid input (exit 2) naming the value.

use chrono::{DateTime, Utc};

use super::exit::{invalid, Failure};
use crate::domain::{
    Actor, AgentId, DomainError, MandateId, MissionRef, PrincipalId, Scope, TenantId,
};
use crate::protocol::{ListQuery, TreeQuery};

/// Parses `principal:<id>`, `agent:<id>` or `admin:<id>`.
pub fn parse_actor(s: &str) -> Result<Actor, Failure> {
    let bad = || {
        invalid(format!(
            "actor {s:?} must be principal:<id>, agent:<id> or admin:<id>"
        ))
    };
    let (kind, id) = s.split_once(':').ok_or_else(bad)?;
    let e = |e: DomainError| invalid(format!("actor {s:?}: {e}"));
    match kind {
        "principal" => Ok(Actor::Principal(PrincipalId::new(id).map_err(e)?)),
        "agent" => Ok(Actor::Agent(AgentId::new(id).map_err(e)?)),
        "admin" => Ok(Actor::Admin(PrincipalId::new(id).map_err(e)?)),
        _ => Err(bad()),
    }
}

/// The moment `ttl` from now, refused (not overflowed) when it is past the
/// latest representable date.
pub fn deadline(ttl: &str) -> Result<DateTime<Utc>, Failure> {
    Utc::now()
        .checked_add_signed(parse_ttl(ttl)?)
        .ok_or_else(|| {
            invalid(format!(
                "duration {ttl:?} reaches past the latest date there is"
            ))
        })
}

/// Parses a duration like `90s`, `30m`, `8h`, `2d`.
pub fn parse_ttl(s: &str) -> Result<chrono::Duration, Failure> {
    let bad = || {
        invalid(format!(
            "duration {s:?} must be a number followed by s, m, h or d (e.g. 8h)"
        ))
    };
    let (num, unit) = s.split_at(s.len().checked_sub(1).ok_or_else(bad)?);
    let n: i64 = num.parse().map_err(|_| bad())?;
    if n <= 0 {
        return Err(invalid(format!(
            "duration {s:?} must be more than zero (e.g. 8h)"
        )));
    }
    let d = match unit {
        "s" => chrono::Duration::try_seconds(n),
        "m" => chrono::Duration::try_minutes(n),
        "h" => chrono::Duration::try_hours(n),
        "d" => chrono::Duration::try_days(n),
        _ => return Err(bad()),
    };
    d.ok_or_else(|| invalid(format!("duration {s:?} is too long")))
}

/// Parses an interval: milliseconds (`250ms`) or a duration as
/// [`parse_ttl`] reads it (`1s`, `2m`).
pub(super) fn parse_interval(s: &str) -> Result<std::time::Duration, Failure> {
    if let Some(ms) = s.strip_suffix("ms") {
        return match ms.parse::<u64>() {
            Ok(n) if n > 0 => Ok(std::time::Duration::from_millis(n)),
            _ => Err(invalid(format!(
                "interval {s:?} must be a positive number of milliseconds (e.g. 250ms) or a duration (e.g. 1s)"
            ))),
        };
    }
    parse_ttl(s)?
        .to_std()
        .map_err(|_| invalid(format!("interval {s:?} is out of range")))
}

/// A value the domain refused, as invalid input with the domain's words.
pub(super) fn valid<T>(parsed: Result<T, DomainError>) -> Result<T, Failure> {
    parsed.map_err(|e| invalid(e.to_string()))
}

pub(super) fn tenant(s: &str) -> Result<TenantId, Failure> {
    valid(TenantId::new(s))
}

/// A comma-separated list of tenants.
pub(super) fn tenants(list: &str) -> Result<Vec<TenantId>, Failure> {
    list.split(',').map(|t| tenant(t.trim())).collect()
}

pub(super) fn agent(s: &str) -> Result<AgentId, Failure> {
    valid(AgentId::new(s))
}

pub(super) fn principal(s: &str) -> Result<PrincipalId, Failure> {
    valid(PrincipalId::new(s))
}

pub(super) fn mission(s: &str) -> Result<MissionRef, Failure> {
    valid(MissionRef::new(s))
}

pub(super) fn mandate_id(s: &str) -> Result<MandateId, Failure> {
    valid(MandateId::parse(s))
}

/// A tree query naming the tree through one of its mandates.
pub(super) fn by_mandate(s: &str) -> Result<TreeQuery, Failure> {
    Ok(TreeQuery {
        tree: None,
        mandate: Some(mandate_id(s)?),
        at: None,
        consistency: Default::default(),
    })
}

/// The grants of `--grant`, saying how to write one when one is wrong.
pub(super) fn scope(grants: &[String]) -> Result<Scope, Failure> {
    const EXAMPLE: &str = "e.g. 'finance:read on reports/q3/*'";
    Scope::parse(grants.iter().map(String::as_str)).map_err(|e| {
        let e = e.to_string();
        if e.contains("'ACTION on RESOURCE'") {
            invalid(format!("{e}, {EXAMPLE}"))
        } else {
            invalid(format!(
                "{e} (write a grant as 'ACTION on RESOURCE', {EXAMPLE})"
            ))
        }
    })
}

/// `list`'s filters.
pub(super) fn list_query(
    agent_id: Option<&str>,
    principal_id: Option<&str>,
    mission_ref: Option<&str>,
) -> Result<ListQuery, Failure> {
    // Said here in the flags' names: the engine's refusal names the wire
    // fields (`mission_ref`), which the command line spells `--mission`.
    let given = [agent_id, principal_id, mission_ref]
        .iter()
        .filter(|f| f.is_some())
        .count();
    if given != 1 {
        return Err(invalid(
            "list takes exactly one of --agent, --principal, --mission",
        ));
    }
    Ok(ListQuery {
        agent: agent_id.map(agent).transpose()?,
        principal: principal_id.map(principal).transpose()?,
        mission_ref: mission_ref.map(mission).transpose()?,
        consistency: Default::default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(r: Result<chrono::Duration, Failure>) -> String {
        let f = r.expect_err("refused");
        assert_eq!(f.code, 2, "{}", f.message);
        f.message
    }

    #[test]
    fn a_duration_of_zero_or_less_is_refused_as_such() {
        for s in ["0s", "0d", "-5h", "-9223372036854775808s"] {
            let m = message(parse_ttl(s));
            assert!(m.contains("more than zero"), "{s}: {m}");
            assert!(m.contains(s), "{s}: {m}");
        }
        for s in ["", "h", "5", "1y", "5 h", "x5h"] {
            let m = message(parse_ttl(s));
            assert!(m.contains("a number followed by"), "{s}: {m}");
        }
        assert_eq!(parse_ttl("90s").unwrap(), chrono::Duration::seconds(90));
        assert_eq!(parse_ttl("2d").unwrap(), chrono::Duration::days(2));
    }

    #[test]
    fn a_grant_without_on_says_how_to_write_one_once() {
        let f = scope(&["x:y".to_string()]).expect_err("refused");
        assert_eq!(f.code, 2, "{}", f.message);
        assert_eq!(
            f.message.matches("'ACTION on RESOURCE'").count(),
            1,
            "{}",
            f.message
        );
        assert!(
            f.message.contains("e.g. 'finance:read on reports/q3/*'"),
            "{}",
            f.message
        );
        let f = scope(&["x:y on ../r".to_string()]).expect_err("refused");
        assert!(f.message.contains("'ACTION on RESOURCE'"), "{}", f.message);
    }

    #[test]
    fn list_names_its_flags_when_not_given_exactly_one() {
        for (a, p, m) in [
            (None, None, None),
            (Some("lead"), Some("cfo"), None),
            (Some("lead"), Some("cfo"), Some("jira:FIN-42")),
        ] {
            let f = list_query(a, p, m).expect_err("refused");
            assert_eq!(f.code, 2, "{}", f.message);
            assert!(
                f.message.contains("--agent") && f.message.contains("--mission"),
                "{}",
                f.message
            );
        }
        let q = list_query(None, None, Some("jira:FIN-42")).unwrap();
        assert_eq!(q.mission_ref.unwrap().as_str(), "jira:FIN-42");
    }
}
