//! What a guarded MCP request asks for, as an action and a resource of the
//! scope grammar (`crate::domain::scope`). Pure: no I/O, no guard.
//!
//! - `tools/call` of tool `T`: action `mcp:<server>:T`; resource the value
//!   of the tool's resource argument (`--resource-arg`), a string that is a
//!   canonical relative path (`reports/q3.txt`).
//! - `resources/read` of `scheme://rest`: action
//!   `mcp:<server>:resource:read`; resource `scheme/rest`, the URI's
//!   scheme followed by its path segments (an empty authority, as in
//!   `file:///a/b`, is dropped: `file/a/b`).
//! - `prompts/get` of prompt `P`: action `mcp:<server>:prompt:P`; resource
//!   `prompts/P`.
//!
//! A tool action has three segments and the others four, so no tool name
//! can stand for a resource read or a prompt. Whatever is not a valid
//! segment (a `/` in a tool name, a `..`, a `%`, a `?` query, an empty
//! segment) is refused with the reason, never passed on: the gateway never
//! rewrites a name or a path into a different one.

use std::collections::BTreeMap;

use crate::domain::authorize::parse_request;

/// The argument that names the resource of tools without their own.
pub(super) const DEFAULT_RESOURCE_ARG: &str = "path";

/// A request mapped to what the guard checks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Checked {
    pub(super) action: String,
    pub(super) resource: String,
}

/// Why a request cannot be mapped; the agent gets it as an invalid-request
/// error and nothing reaches the server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Unmappable(pub(super) String);

/// How requests of one server map to actions and resources.
#[derive(Clone, Debug)]
pub(super) struct Mapping {
    server: String,
    default_arg: String,
    per_tool: BTreeMap<String, String>,
}

impl Mapping {
    /// The mapping of `server` (one action segment), with `resource_args`:
    /// `ARG` (the default resource argument) or `TOOL=ARG` (one tool's).
    pub(super) fn new(server: &str, resource_args: &[String]) -> Result<Self, String> {
        if !is_segment(server) {
            return Err(format!(
                "server name {server:?} must be one action segment: letters, digits or -_.@+="
            ));
        }
        let mut default_arg = None;
        let mut per_tool = BTreeMap::new();
        for spec in resource_args {
            match spec.split_once('=') {
                Some((tool, arg)) => {
                    if !is_segment(tool) || arg.is_empty() {
                        return Err(format!(
                            "--resource-arg {spec:?}: expected TOOL=ARG with TOOL a tool name (letters, digits or -_.@+=) and ARG an argument name"
                        ));
                    }
                    if per_tool.insert(tool.to_string(), arg.to_string()).is_some() {
                        return Err(format!("--resource-arg names tool {tool:?} twice"));
                    }
                }
                None if spec.is_empty() => {
                    return Err("--resource-arg must name an argument".into())
                }
                None => {
                    if default_arg.replace(spec.clone()).is_some() {
                        return Err(
                            "--resource-arg without TOOL= (the default argument) is given twice"
                                .into(),
                        );
                    }
                }
            }
        }
        Ok(Self {
            server: server.to_string(),
            default_arg: default_arg.unwrap_or_else(|| DEFAULT_RESOURCE_ARG.into()),
            per_tool,
        })
    }

    /// The `<server>` segment.
    pub(super) fn server(&self) -> &str {
        &self.server
    }

    /// The argument naming `tool`'s resource.
    pub(super) fn resource_arg(&self, tool: &str) -> &str {
        self.per_tool
            .get(tool)
            .map(String::as_str)
            .unwrap_or(&self.default_arg)
    }

    /// `tools/call` of `tool` with `arguments`.
    pub(super) fn tool_call(
        &self,
        tool: &str,
        arguments: Option<&serde_json::Map<String, serde_json::Value>>,
    ) -> Result<Checked, Unmappable> {
        if !is_segment(tool) {
            return Err(Unmappable(format!(
                "tool name {:?} is not a valid action segment (letters, digits or -_.@+=): refused",
                shorten(tool)
            )));
        }
        let arg = self.resource_arg(tool);
        let value = arguments.and_then(|a| a.get(arg)).ok_or_else(|| {
            Unmappable(format!(
                "tool {tool:?} was called without its resource argument {arg:?}: refused"
            ))
        })?;
        let Some(resource) = value.as_str() else {
            return Err(Unmappable(format!(
                "the resource argument {arg:?} of tool {tool:?} must be a string, not {}",
                kind_of(value)
            )));
        };
        self.checked(format!("mcp:{}:{tool}", self.server), resource, || {
            format!("the resource argument {arg:?} of tool {tool:?}")
        })
    }

    /// `resources/read` of `uri`.
    pub(super) fn resource_read(&self, uri: &str) -> Result<Checked, Unmappable> {
        let resource = uri_resource(uri).map_err(|why| {
            Unmappable(format!(
                "resource URI {:?} has no canonical resource path: {why}; refused",
                shorten(uri)
            ))
        })?;
        self.checked(
            format!("mcp:{}:resource:read", self.server),
            &resource,
            || format!("resource URI {:?}", shorten(uri)),
        )
    }

    /// `prompts/get` of `name`.
    pub(super) fn prompt_get(&self, name: &str) -> Result<Checked, Unmappable> {
        if !is_segment(name) {
            return Err(Unmappable(format!(
                "prompt name {:?} is not a valid action segment (letters, digits or -_.@+=): refused",
                shorten(name)
            )));
        }
        self.checked(
            format!("mcp:{}:prompt:{name}", self.server),
            &format!("prompts/{name}"),
            || format!("prompt {name:?}"),
        )
    }

    /// `action` on `resource` once the scope grammar accepts both as a
    /// concrete request.
    fn checked(
        &self,
        action: String,
        resource: &str,
        what: impl FnOnce() -> String,
    ) -> Result<Checked, Unmappable> {
        parse_request(&action, resource).map_err(|e| {
            Unmappable(format!(
                "{} gives {:?}, not a valid request ({e}): refused",
                what(),
                shorten(resource)
            ))
        })?;
        Ok(Checked {
            action,
            resource: resource.to_string(),
        })
    }
}

/// `scheme://authority/path` as `scheme/authority/path` (`file:///a` as
/// `file/a`). The segments are checked by the scope grammar afterwards.
fn uri_resource(uri: &str) -> Result<String, String> {
    let (scheme, rest) = uri
        .split_once("://")
        .ok_or_else(|| "expected scheme://path".to_string())?;
    if scheme.is_empty()
        || !scheme
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'))
    {
        return Err(format!("scheme {scheme:?} is not a URI scheme"));
    }
    // Only an empty authority (`file:///x`) is dropped; any other empty
    // segment is left for the grammar to refuse.
    let rest = rest.strip_prefix('/').unwrap_or(rest);
    if rest.is_empty() {
        return Err("the URI has no path".into());
    }
    Ok(format!("{}/{rest}", scheme.to_ascii_lowercase()))
}

/// One segment of the scope grammar (no wildcard).
fn is_segment(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s.bytes().all(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'@' | b'+' | b'=')
        })
}

/// At most 100 characters of untrusted text for an error message.
fn shorten(s: &str) -> String {
    match s.char_indices().nth(100) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_string(),
    }
}

fn kind_of(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

/// The `<server>` segment a command stands for when `--server-name` is not
/// given: the program's file name without its extension, or, for a runner
/// (`python3 server.py`, `npx -y @scope/server-files`, `uvx mcp-git`), that
/// of its first argument that is not a flag.
pub(super) fn derive_server_name(command: &[String]) -> Option<String> {
    const RUNNERS: &[&str] = &[
        "python", "python3", "node", "npx", "uvx", "uv", "deno", "bun", "bunx", "sh", "bash",
        "env", "pipx", "java", "ruby", "perl",
    ];
    let stem = |word: &str| -> String {
        let base = word.rsplit('/').next().unwrap_or(word);
        match base.rsplit_once('.') {
            Some((stem, _)) if !stem.is_empty() => stem.to_string(),
            _ => base.to_string(),
        }
    };
    let program = command.first()?;
    let program_stem = stem(program);
    let runner = RUNNERS.contains(&program_stem.as_str())
        || program_stem.starts_with("python3.")
        || program_stem.starts_with("python");
    let name = if runner {
        let arg = command[1..]
            .iter()
            .find(|a| !a.starts_with('-') && !a.contains('='))?;
        stem(arg)
    } else {
        program_stem
    };
    is_segment(&name).then_some(name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn mapping(args: &[&str]) -> Mapping {
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        Mapping::new("files", &args).unwrap()
    }

    fn args(v: serde_json::Value) -> serde_json::Map<String, serde_json::Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn a_tool_call_is_its_action_on_its_resource_argument() {
        let m = mapping(&["search=dir"]);
        assert_eq!(
            m.tool_call("read_file", Some(&args(json!({"path": "reports/q3.txt"}))))
                .unwrap(),
            Checked {
                action: "mcp:files:read_file".into(),
                resource: "reports/q3.txt".into()
            }
        );
        assert_eq!(
            m.tool_call("search", Some(&args(json!({"dir": "src", "path": "x"}))))
                .unwrap()
                .resource,
            "src"
        );
    }

    #[test]
    fn a_tool_call_without_a_valid_resource_is_refused_with_the_reason() {
        let m = mapping(&[]);
        let e = m.tool_call("read_file", None).unwrap_err().0;
        assert!(e.contains("without its resource argument \"path\""), "{e}");
        let e = m
            .tool_call("read_file", Some(&args(json!({"path": 3}))))
            .unwrap_err()
            .0;
        assert!(e.contains("must be a string, not a number"), "{e}");
        for bad in ["/etc/passwd", "reports/../hr", "a//b", "a/*", "x?y=1", ""] {
            let e = m
                .tool_call("read_file", Some(&args(json!({ "path": bad }))))
                .unwrap_err()
                .0;
            assert!(e.contains("not a valid request"), "{bad}: {e}");
        }
    }

    #[test]
    fn a_tool_name_that_is_not_a_segment_is_refused() {
        let m = mapping(&[]);
        for bad in ["read:file", "read/file", "*", "", "a b"] {
            let e = m
                .tool_call(bad, Some(&args(json!({"path": "a"}))))
                .unwrap_err()
                .0;
            assert!(e.contains("is not a valid action segment"), "{bad}: {e}");
        }
    }

    #[test]
    fn resource_uris_become_canonical_paths_or_are_refused() {
        let m = mapping(&[]);
        assert_eq!(
            m.resource_read("docs://guide/intro").unwrap(),
            Checked {
                action: "mcp:files:resource:read".into(),
                resource: "docs/guide/intro".into()
            }
        );
        assert_eq!(
            m.resource_read("file:///reports/q3.txt").unwrap().resource,
            "file/reports/q3.txt"
        );
        for bad in [
            "docs:guide",
            "docs://",
            "file:///a/../b",
            "file:////a",
            "docs://a%2Fb",
            "docs://a?x=1",
            "://a",
        ] {
            assert!(m.resource_read(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_prompt_is_its_own_action() {
        let m = mapping(&[]);
        assert_eq!(
            m.prompt_get("summarize").unwrap(),
            Checked {
                action: "mcp:files:prompt:summarize".into(),
                resource: "prompts/summarize".into()
            }
        );
        assert!(m.prompt_get("a/b").is_err());
    }

    #[test]
    fn bad_settings_are_refused() {
        assert!(Mapping::new("my:server", &[]).is_err());
        let two = ["a".to_string(), "b".to_string()];
        assert!(Mapping::new("files", &two).is_err());
        let twice = ["t=a".to_string(), "t=b".to_string()];
        assert!(Mapping::new("files", &twice).is_err());
        assert!(Mapping::new("files", &["t=".to_string()]).is_err());
    }

    #[test]
    fn the_server_name_comes_from_the_command() {
        let name =
            |c: &[&str]| derive_server_name(&c.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        assert_eq!(
            name(&["python3", "-u", "tests/mcp/server.py"]).as_deref(),
            Some("server")
        );
        assert_eq!(
            name(&["npx", "-y", "@modelcontextprotocol/server-filesystem", "/d"]).as_deref(),
            Some("server-filesystem")
        );
        assert_eq!(
            name(&["/usr/bin/mcp-git", "--repo", "x"]).as_deref(),
            Some("mcp-git")
        );
        assert_eq!(name(&["python3"]), None);
    }
}
