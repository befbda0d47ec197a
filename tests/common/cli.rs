//! Running the `mandate` binary. Not every test binary uses every helper.
#![allow(dead_code)]

use std::path::Path;
use std::process::{Command, Output};

/// The `mandate` binary on its embedded engine under `data`, with `args`,
/// and none of the `MANDATE_*` settings of the environment it runs in.
pub fn mandate(data: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_mandate"))
        .arg("--data")
        .arg(data)
        .args(args)
        .env_remove("MANDATE_NATS")
        .env_remove("MANDATE_TENANT")
        .env_remove("MANDATE_ACTOR")
        .output()
        .expect("run the mandate binary")
}

/// Standard output followed by standard error.
pub fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// `mandate issue` on the embedded engine under `data`, as principal cfo: a
/// root to `agent` for `purpose` granting `grant`, with `more` arguments
/// after, and `--json` output if `json`.
pub fn cfo_issues(
    data: &Path,
    json: bool,
    agent: &str,
    purpose: &str,
    grant: &str,
    more: &[&str],
) -> Output {
    let mut args = vec!["--actor", "principal:cfo"];
    if json {
        args.push("--json");
    }
    args.extend(["issue", "--principal", "cfo", "--agent", agent]);
    args.extend(["--purpose", purpose, "--grant", grant]);
    args.extend(more);
    mandate(data, &args)
}
