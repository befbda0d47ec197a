//! Scope: what a mandate allows, as a set of grants.
//!
//! A grant is an *action pattern* on a *resource pattern*:
//! - actions are `:`-separated segments with an optional trailing `*` that
//!   matches one or more further segments: `finance:read`, `finance:*`, `*`;
//! - resources are `/`-separated paths where `*` matches exactly one segment
//!   and a trailing `**` matches any suffix, including none: `reports/q3/*`,
//!   `tickets/**`, `**`.
//!
//! Segments are non-empty and made of ASCII letters, digits and `-_.@+=`;
//! a `*` is only ever a whole segment. A resource segment is never `.` or
//! `..`: patterns and requests are canonical paths, so a request such as
//! `reports/../hr` is refused before any matching rather than allowed under
//! `reports/**` (empty segments were never accepted). Requests checked
//! against a scope are concrete: no wildcard at all.
//!
//! [`Scope::covers`] decides containment. It is *sound*: when it says the
//! parent covers the child, every concrete request the child allows, the parent
//! allows too. It is exact for one grant against one grant. For a scope it
//! requires every child grant to be covered by a *single* parent grant, so a
//! child grant that only the union of several parent grants would cover is
//! refused: we refuse rather than over-grant.

use std::fmt;
use std::str::FromStr;

use schemars::JsonSchema;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::error::DomainError;
use super::ids::truncate_for_error;

/// Longest accepted pattern, in bytes.
pub const MAX_PATTERN_LEN: usize = 256;
/// Most grants one scope may hold.
pub const MAX_GRANTS: usize = 64;

fn valid_segment(s: &str) -> bool {
    !s.is_empty()
        && s.bytes().all(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'@' | b'+' | b'=')
        })
}

fn invalid(pattern: &str, reason: impl Into<String>) -> DomainError {
    DomainError::InvalidScope {
        pattern: truncate_for_error(pattern),
        reason: reason.into(),
    }
}

/// The segments of a pattern `s` of `kind` (action or resource), split at
/// `separator`, once its length is within bounds and it is not empty.
fn segments<'a>(s: &'a str, kind: &str, separator: char) -> Result<Vec<&'a str>, DomainError> {
    if s.len() > MAX_PATTERN_LEN {
        return Err(invalid(s, "longer than 256 bytes"));
    }
    if s.is_empty() {
        return Err(invalid(s, format!("{kind} must not be empty")));
    }
    Ok(s.split(separator).collect())
}

/// An action pattern: literal segments, optionally followed by `*`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ActionPattern {
    prefix: Vec<String>,
    wildcard: bool,
}

impl ActionPattern {
    /// Parses `finance:read`, `finance:*` or `*`.
    pub fn parse(s: &str) -> Result<Self, DomainError> {
        let parts = segments(s, "action", ':')?;
        let (last, init) = parts.split_last().expect("split yields at least one part");
        let wildcard = *last == "*";
        let mut prefix: Vec<String> = Vec::with_capacity(parts.len());
        for seg in init.iter().chain(if wildcard { None } else { Some(last) }) {
            if seg.contains('*') {
                return Err(invalid(s, "'*' may only be the last action segment"));
            }
            if !valid_segment(seg) {
                return Err(invalid(
                    s,
                    format!("action segment {seg:?} must be non-empty letters, digits or -_.@+="),
                ));
            }
            prefix.push((*seg).to_string());
        }
        Ok(Self { prefix, wildcard })
    }

    /// True when this pattern has no wildcard.
    pub fn is_concrete(&self) -> bool {
        !self.wildcard
    }

    /// Does this pattern match the concrete action `action`?
    pub fn matches(&self, action: &ActionPattern) -> bool {
        self.covers(action)
    }

    /// Is every action `child` matches also matched by `self`? Exact.
    pub fn covers(&self, child: &ActionPattern) -> bool {
        let p = self.prefix.len();
        if !self.wildcard {
            // A literal covers only itself.
            return !child.wildcard && child.prefix == self.prefix;
        }
        // self matches every action with more than p segments starting with prefix.
        // A child wildcard matches actions with > len(child.prefix) segments; a
        // child literal matches exactly len(child.prefix) segments.
        let child_min = if child.wildcard {
            child.prefix.len() + 1
        } else {
            child.prefix.len()
        };
        child_min > p && child.prefix.len() >= p && child.prefix[..p] == self.prefix[..]
    }

    /// Does this pattern match `action`, a concrete action as written (one
    /// [`is_concrete_request`] accepts)? The same answer as [`Self::covers`]
    /// on its parsed form, without parsing or allocating: the hot path of a
    /// guard's check.
    pub fn covers_concrete(&self, action: &str) -> bool {
        let mut segs = action.split(':');
        for p in &self.prefix {
            if segs.next() != Some(p.as_str()) {
                return false;
            }
        }
        // A wildcard needs at least one segment more; a literal none.
        segs.next().is_some() == self.wildcard
    }
}

impl ActionPattern {
    /// The pattern as written, `finance:read` or `finance:*`.
    fn text(&self) -> String {
        joined(
            self.prefix.iter().map(String::as_str),
            self.wildcard.then_some("*"),
            ':',
        )
    }
}

impl fmt::Display for ActionPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text())
    }
}

/// `parts` then `last`, if any, joined by `sep`, in one allocation: a
/// pattern's text, which every check's reply and audit record writes for
/// each grant of its chain.
fn joined<'a>(
    parts: impl Iterator<Item = &'a str> + Clone,
    last: Option<&'a str>,
    sep: char,
) -> String {
    let all = parts.chain(last);
    let len = all.clone().map(|p| p.len() + 1).sum::<usize>();
    let mut out = String::with_capacity(len);
    for (i, p) in all.enumerate() {
        if i > 0 {
            out.push(sep);
        }
        out.push_str(p);
    }
    out
}

/// One segment of a resource pattern.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Seg {
    Literal(String),
    /// `*`: exactly one segment.
    Any,
}

/// A resource pattern: segments, optionally followed by `**`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ResourcePattern {
    segs: Vec<Seg>,
    /// A trailing `**`: any suffix, including the empty one.
    rest: bool,
}

impl ResourcePattern {
    /// Parses `reports/q3/*`, `tickets/**` or `**`.
    pub fn parse(s: &str) -> Result<Self, DomainError> {
        let parts = segments(s, "resource", '/')?;
        let mut segs = Vec::with_capacity(parts.len());
        let mut rest = false;
        for (i, seg) in parts.iter().enumerate() {
            match *seg {
                "**" if i + 1 == parts.len() => rest = true,
                "**" => return Err(invalid(s, "'**' may only be the last resource segment")),
                "*" => segs.push(Seg::Any),
                lit if lit.contains('*') => {
                    return Err(invalid(s, "'*' must be a whole segment"));
                }
                "." | ".." => {
                    return Err(invalid(
                        s,
                        format!(
                            "resource segment {seg:?} is a relative path step; resources are canonical paths"
                        ),
                    ));
                }
                lit if !valid_segment(lit) => {
                    return Err(invalid(
                        s,
                        format!(
                            "resource segment {lit:?} must be non-empty letters, digits or -_.@+="
                        ),
                    ));
                }
                lit => segs.push(Seg::Literal(lit.to_string())),
            }
        }
        Ok(Self { segs, rest })
    }

    /// True when this pattern has no wildcard.
    pub fn is_concrete(&self) -> bool {
        !self.rest && self.segs.iter().all(|s| matches!(s, Seg::Literal(_)))
    }

    /// Is every resource `child` matches also matched by `self`? Exact.
    pub fn covers(&self, child: &ResourcePattern) -> bool {
        let (m, n) = (self.segs.len(), child.segs.len());
        let lengths_ok = match (self.rest, child.rest) {
            // The child matches exactly n segments.
            (false, false) => m == n,
            (true, false) => m <= n,
            // The child matches n or more: only a parent with `**` matches unbounded lengths.
            (false, true) => false,
            (true, true) => m <= n,
        };
        lengths_ok
            && self
                .segs
                .iter()
                .zip(&child.segs)
                .all(|(p, c)| match (p, c) {
                    (Seg::Any, _) => true,
                    (Seg::Literal(a), Seg::Literal(b)) => a == b,
                    (Seg::Literal(_), Seg::Any) => false,
                })
    }

    /// Does this pattern match `resource`, a concrete resource as written
    /// (one [`is_concrete_request`] accepts)? The same answer as
    /// [`Self::covers`] on its parsed form, without parsing or allocating.
    pub fn covers_concrete(&self, resource: &str) -> bool {
        let mut segs = resource.split('/');
        for p in &self.segs {
            match (p, segs.next()) {
                (_, None) => return false,
                (Seg::Any, Some(_)) => {}
                (Seg::Literal(l), Some(s)) if l == s => {}
                (Seg::Literal(_), Some(_)) => return false,
            }
        }
        self.rest || segs.next().is_none()
    }
}

/// Would [`crate::domain::authorize::parse_request`] accept `action` on `resource`:
/// both within bounds, made of valid segments, with no wildcard and no
/// relative path step? Decided without allocating, for the hot path that
/// then matches with [`ActionPattern::covers_concrete`] and
/// [`ResourcePattern::covers_concrete`].
pub fn is_concrete_request(action: &str, resource: &str) -> bool {
    let bounded = |s: &str| !s.is_empty() && s.len() <= MAX_PATTERN_LEN;
    // `valid_segment` refuses `*`, so a segment that passes is no wildcard.
    bounded(action)
        && action.split(':').all(valid_segment)
        && bounded(resource)
        && resource
            .split('/')
            .all(|seg| valid_segment(seg) && seg != "." && seg != "..")
}

impl ResourcePattern {
    /// The pattern as written, `reports/q3/*` or `tickets/**`.
    fn text(&self) -> String {
        joined(
            self.segs.iter().map(|s| match s {
                Seg::Literal(l) => l.as_str(),
                Seg::Any => "*",
            }),
            self.rest.then_some("**"),
            '/',
        )
    }
}

impl fmt::Display for ResourcePattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text())
    }
}

macro_rules! string_serde {
    ($t:ty, $desc:literal, $pattern:literal) => {
        impl Serialize for $t {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                // One string, written as such: `collect_str` would go
                // through the formatter a character at a time.
                s.serialize_str(&self.text())
            }
        }
        impl<'de> Deserialize<'de> for $t {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                Self::parse(&s).map_err(serde::de::Error::custom)
            }
        }
        impl FromStr for $t {
            type Err = DomainError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Self::parse(s)
            }
        }
        impl JsonSchema for $t {
            fn schema_name() -> std::borrow::Cow<'static, str> {
                stringify!($t).into()
            }
            fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
                schemars::json_schema!({
                    "type": "string",
                    "minLength": 1,
                    "maxLength": MAX_PATTERN_LEN,
                    "pattern": $pattern,
                    "description": $desc,
                })
            }
        }
    };
}

string_serde!(
    ActionPattern,
    "':'-separated action segments, optionally ending in '*' (one or more further segments): 'finance:read', 'finance:*', '*'",
    r"^(\*|[A-Za-z0-9._@+=-]+(:[A-Za-z0-9._@+=-]+)*(:\*)?)$"
);
string_serde!(
    ResourcePattern,
    "'/'-separated resource path; '*' matches one segment, a trailing '**' any suffix: 'reports/q3/*', 'tickets/**'",
    r"^(\*\*|((?:[A-Za-z0-9_@+=-][A-Za-z0-9._@+=-]*|\.[A-Za-z0-9_@+=-][A-Za-z0-9._@+=-]*|\.\.[A-Za-z0-9._@+=-]+)|\*)(/((?:[A-Za-z0-9_@+=-][A-Za-z0-9._@+=-]*|\.[A-Za-z0-9_@+=-][A-Za-z0-9._@+=-]*|\.\.[A-Za-z0-9._@+=-]+)|\*))*(/\*\*)?)$"
);

/// One grant: an action pattern on a resource pattern.
#[derive(
    Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
#[serde(deny_unknown_fields)]
pub struct Grant {
    pub action: ActionPattern,
    pub resource: ResourcePattern,
}

impl Grant {
    /// Parses both patterns.
    pub fn parse(action: &str, resource: &str) -> Result<Self, DomainError> {
        Ok(Self {
            action: ActionPattern::parse(action)?,
            resource: ResourcePattern::parse(resource)?,
        })
    }

    /// Exact containment of one grant in another.
    pub fn covers(&self, child: &Grant) -> bool {
        self.action.covers(&child.action) && self.resource.covers(&child.resource)
    }
}

impl fmt::Display for Grant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} on {}", self.action, self.resource)
    }
}

impl FromStr for Grant {
    type Err = DomainError;
    /// `action@resource` is not used because `@` is a legal segment
    /// character; the textual form is `action on resource`, or `action resource`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut parts = s.split_whitespace().filter(|p| *p != "on");
        match (parts.next(), parts.next(), parts.next()) {
            (Some(a), Some(r), None) => Grant::parse(a, r),
            _ => Err(invalid(s, "a grant is written 'ACTION on RESOURCE'")),
        }
    }
}

/// A set of grants. Never empty; at most [`MAX_GRANTS`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(transparent)]
pub struct Scope(#[schemars(length(min = 1, max = 64))] Vec<Grant>);

impl Scope {
    /// Builds a scope, refusing an empty or oversized one. Duplicates are
    /// dropped and the grants kept sorted, so equal scopes compare equal.
    pub fn new(mut grants: Vec<Grant>) -> Result<Self, DomainError> {
        if grants.is_empty() {
            return Err(DomainError::InvalidField {
                field: "scope",
                reason: "must hold at least one grant".into(),
            });
        }
        if grants.len() > MAX_GRANTS {
            return Err(DomainError::InvalidField {
                field: "scope",
                reason: format!(
                    "holds {} grants, at most {MAX_GRANTS} allowed",
                    grants.len()
                ),
            });
        }
        grants.sort();
        grants.dedup();
        Ok(Self(grants))
    }

    /// Parses grants written `ACTION on RESOURCE`.
    pub fn parse<'a>(grants: impl IntoIterator<Item = &'a str>) -> Result<Self, DomainError> {
        Self::new(
            grants
                .into_iter()
                .map(str::parse)
                .collect::<Result<_, _>>()?,
        )
    }

    /// The grants, sorted.
    pub fn grants(&self) -> &[Grant] {
        &self.0
    }

    /// The first grant of `child` that no single grant of `self` covers, if any.
    /// `None` means `self` covers `child` (soundly; see the module docs).
    pub fn first_uncovered<'a>(&self, child: &'a Scope) -> Option<&'a Grant> {
        child.0.iter().find(|c| !self.0.iter().any(|p| p.covers(c)))
    }

    /// Does every request `child` allows fall within `self`?
    pub fn covers(&self, child: &Scope) -> bool {
        self.first_uncovered(child).is_none()
    }

    /// Does this scope allow the concrete request?
    pub fn allows(&self, action: &ActionPattern, resource: &ResourcePattern) -> bool {
        // `Grant::covers` on the request as a grant, without building one.
        self.0
            .iter()
            .any(|g| g.action.covers(action) && g.resource.covers(resource))
    }

    /// Does this scope allow the concrete request as written (one
    /// [`is_concrete_request`] accepts)? The same answer as [`Self::allows`]
    /// on its parsed form, without parsing or allocating.
    pub fn allows_concrete(&self, action: &str, resource: &str) -> bool {
        self.0
            .iter()
            .any(|g| g.action.covers_concrete(action) && g.resource.covers_concrete(resource))
    }
}

/// A scope made ready to match many concrete requests as written: each
/// pattern is kept as the text a matching request equals or starts with,
/// so that a grant is passed over with one comparison. It answers exactly
/// what [`Scope::allows_concrete`] (and so [`Scope::allows`]) answers.
#[derive(Clone, Debug)]
pub struct ScopeMatcher(Vec<GrantMatcher>);

/// One grant as a [`ScopeMatcher`] holds it.
#[derive(Clone, Debug)]
struct GrantMatcher {
    action: TextMatch,
    resource: TextMatch,
}

/// How a pattern matches a concrete, valid request (one
/// [`is_concrete_request`] accepts) as written.
#[derive(Clone, Debug)]
enum TextMatch {
    /// A pattern without wildcards: the request is this text.
    Exactly(String),
    /// An action pattern ending in `*`: the request starts with this text,
    /// which is the literal segments each followed by `:` (empty for `*`).
    /// A valid action has no empty segment, so at least one more follows.
    Below(String),
    /// A resource pattern of literal segments ending in `**`: the request
    /// is this text, or starts with it and `/` (any request, when empty).
    Under(String),
    /// A resource pattern with a `*` segment: matched segment by segment.
    Segments(ResourcePattern),
}

impl TextMatch {
    fn action(p: &ActionPattern) -> Self {
        if p.wildcard {
            let mut prefix = String::new();
            for seg in &p.prefix {
                prefix.push_str(seg);
                prefix.push(':');
            }
            Self::Below(prefix)
        } else {
            Self::Exactly(p.prefix.join(":"))
        }
    }

    fn resource(p: &ResourcePattern) -> Self {
        let literal: Option<Vec<&str>> = p
            .segs
            .iter()
            .map(|s| match s {
                Seg::Literal(l) => Some(l.as_str()),
                Seg::Any => None,
            })
            .collect();
        match literal {
            Some(segs) if p.rest => Self::Under(segs.join("/")),
            Some(segs) => Self::Exactly(segs.join("/")),
            None => Self::Segments(p.clone()),
        }
    }

    fn matches(&self, request: &str) -> bool {
        match self {
            Self::Exactly(text) => request == text,
            Self::Below(prefix) => request.starts_with(prefix.as_str()),
            Self::Under(prefix) => {
                prefix.is_empty()
                    || request
                        .strip_prefix(prefix.as_str())
                        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
            }
            Self::Segments(p) => p.covers_concrete(request),
        }
    }
}

impl ScopeMatcher {
    /// Does the scope allow the concrete request as written (one
    /// [`is_concrete_request`] accepts)?
    pub fn allows(&self, action: &str, resource: &str) -> bool {
        self.0
            .iter()
            .any(|g| g.action.matches(action) && g.resource.matches(resource))
    }
}

impl Scope {
    /// This scope made ready to match many requests ([`ScopeMatcher`]).
    pub fn matcher(&self) -> ScopeMatcher {
        ScopeMatcher(
            self.0
                .iter()
                .map(|g| GrantMatcher {
                    action: TextMatch::action(&g.action),
                    resource: TextMatch::resource(&g.resource),
                })
                .collect(),
        )
    }
}

impl<'de> Deserialize<'de> for Scope {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let grants = Vec::<Grant>::deserialize(d)?;
        Scope::new(grants).map_err(serde::de::Error::custom)
    }
}

/// `covers(parent, child)`: see [`Scope::covers`].
pub fn covers(parent: &Scope, child: &Scope) -> bool {
    parent.covers(child)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(s: &str) -> ActionPattern {
        ActionPattern::parse(s).unwrap()
    }
    fn r(s: &str) -> ResourcePattern {
        ResourcePattern::parse(s).unwrap()
    }

    /// A pattern writes, shows and serializes as the text it was parsed
    /// from, whatever its shape.
    #[test]
    fn a_pattern_is_written_as_its_text() {
        for text in ["*", "finance", "finance:read", "finance:*", "a:b:c:*"] {
            let p = a(text);
            assert_eq!(p.to_string(), text);
            assert_eq!(serde_json::to_string(&p).unwrap(), format!("{text:?}"));
        }
        for text in [
            "**",
            "*",
            "reports",
            "reports/q3/*",
            "a/*/b/**",
            "x/y.z/..w",
        ] {
            let p = r(text);
            assert_eq!(p.to_string(), text);
            assert_eq!(serde_json::to_string(&p).unwrap(), format!("{text:?}"));
        }
    }

    #[test]
    fn action_wildcards() {
        assert!(a("*").covers(&a("finance:read")));
        assert!(a("*").covers(&a("finance:*")));
        assert!(a("finance:*").covers(&a("finance:read")));
        assert!(a("finance:*").covers(&a("finance:read:q3")));
        assert!(a("finance:*").covers(&a("finance:read:*")));
        assert!(!a("finance:*").covers(&a("finance")));
        assert!(!a("finance:*").covers(&a("*")));
        assert!(!a("finance:read").covers(&a("finance:*")));
        assert!(!a("finance:read").covers(&a("finance:write")));
        assert!(a("finance:read").covers(&a("finance:read")));
        assert!(!a("finance:read:*").covers(&a("finance:*")));
    }

    #[test]
    fn resource_wildcards() {
        assert!(r("reports/q3/*").covers(&r("reports/q3/summary")));
        assert!(!r("reports/q3/*").covers(&r("reports/q3/summary/x")));
        assert!(!r("reports/q3/*").covers(&r("reports/q3")));
        assert!(r("tickets/**").covers(&r("tickets")));
        assert!(r("tickets/**").covers(&r("tickets/1/comments")));
        assert!(r("tickets/**").covers(&r("tickets/*/x/**")));
        assert!(!r("tickets/*").covers(&r("tickets/**")));
        assert!(r("**").covers(&r("a/b/c")));
        assert!(!r("reports/*").covers(&r("*/x")));
        assert!(r("*/x").covers(&r("reports/x")));
    }

    #[test]
    fn parser_errors_name_pattern_and_reason() {
        for bad in ["", "fin*", "a::b", "*:read", "a b", "a.*"] {
            let err = ActionPattern::parse(bad).unwrap_err();
            assert!(
                matches!(err, DomainError::InvalidScope { .. }),
                "{bad}: {err}"
            );
        }
        for bad in [
            "", "/a", "a//b", "a/**/b", "a/b*", "a/b/", "a b", "a/../b", "./a", "a/..", "..",
        ] {
            let err = ResourcePattern::parse(bad).unwrap_err();
            assert!(err.to_string().contains(&format!("{bad:?}")), "{err}");
        }
        let long = "a".repeat(300);
        assert!(ResourcePattern::parse(&long).is_err());
    }

    #[test]
    fn scope_round_trips_and_refuses_empty() {
        let s = Scope::parse(["finance:read on reports/q3/*", "tickets:* on tickets/**"]).unwrap();
        let json = serde_json::to_string(&s).unwrap();
        let back: Scope = serde_json::from_str(&json).unwrap();
        assert_eq!(s, back);
        assert!(serde_json::from_str::<Scope>("[]").is_err());
        assert!(Scope::parse(["finance:read"]).is_err());
    }

    #[test]
    fn union_cover_is_refused_not_overgranted() {
        // `a/**` is exactly `a` plus `a/*/**`: the parent covers the child only
        // through its two grants together, which the single-grant rule refuses.
        let parent = Scope::parse(["x:* on a", "x:* on a/*/**"]).unwrap();
        let child = Scope::parse(["x:read on a/**"]).unwrap();
        assert!(!parent.covers(&child));
        let single = Scope::parse(["x:* on a/**"]).unwrap();
        assert!(single.covers(&child));
    }
}
