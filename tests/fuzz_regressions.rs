//! Every input saved under `tests/corpus/fuzz/<target>/` (those that broke a
//! property once, and the seeds the fuzzers start from, `fuzz/seeds/`) is
//! replayed through its fuzz target's check as an ordinary test: the checks
//! are the same file the fuzzers run (`fuzz/checks.rs`). The fuzzers
//! themselves run in `fuzz/run.sh` (a short smoke run in `scripts/test.sh`).

#[allow(dead_code)] // every check is used, some only through the table below
#[path = "../fuzz/checks.rs"]
mod checks;

use std::path::Path;

/// Replays every file under each directory through `check`; returns how
/// many it ran.
fn replay<T>(target: &str, check: fn(&[u8]) -> T) -> usize {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut ran = 0;
    for dir in [
        root.join("tests/corpus/fuzz").join(target),
        root.join("fuzz/seeds").join(target),
    ] {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        let mut files: Vec<_> = entries.flatten().map(|e| e.path()).collect();
        files.sort();
        for file in files.into_iter().filter(|f| f.is_file()) {
            let data = std::fs::read(&file).unwrap();
            let outcome = std::panic::catch_unwind(|| {
                check(&data);
            });
            assert!(
                outcome.is_ok(),
                "{target}: {} breaks the property again",
                file.display()
            );
            ran += 1;
        }
    }
    ran
}

#[test]
fn saved_command_inputs_still_hold() {
    assert!(replay("decode_command", checks::decode_command) > 0);
}

#[test]
fn saved_wire_inputs_still_hold() {
    assert!(replay("decode_wire", checks::decode_wire) > 0);
}

#[test]
fn saved_scope_inputs_still_hold() {
    assert!(replay("scope_covers", checks::scope_covers) > 0);
}

/// The checks reach their properties: a valid command is decoded and
/// round-tripped, a commit is decoded and folded, and a covering pair of
/// scopes has requests derived and checked (not only parse errors).
#[test]
fn the_checks_reach_their_properties() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let issue = std::fs::read(root.join("schemas/examples/command.issue.valid.json")).unwrap();
    assert!(checks::decode_command(&issue));
    assert!(!checks::decode_command(b"{\"type\":\"issue\"}"));
    let commit = std::fs::read(root.join("fuzz/seeds/decode_wire/commit.json")).unwrap();
    assert!(checks::decode_wire(&commit) >= 1);
    // All zeros: the generator's parent and child are both `a on a`.
    assert_eq!(checks::scope_covers(&[0u8; 16]), 4);
    // Free text that does not parse checks nothing, and does not panic.
    assert_eq!(checks::scope_covers(b"\x01finance:read on ../x"), 0);
}

/// Found by `decode_wire` (out of memory): a commit whose `mandate_issued`
/// names the mandate as its own parent (or two mandates as each other's)
/// decodes, and the fold made a parent cycle, on which every walk up the
/// chain (`chain`, `effective`, every check) ran without end. Anyone who
/// can write on the event stream could have sent it: the first event of a
/// tree has no hash to match. A mandate is folded in only under a parent
/// the tree already holds, and only once.
#[test]
fn a_mandate_is_folded_in_only_under_a_parent_already_there() {
    use mandate::domain::{replay, Event};
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus/fuzz/decode_wire");
    for name in ["self-parent.json", "parent-cycle.json"] {
        let events = Event::decode_commit(&std::fs::read(root.join(name)).unwrap()).unwrap();
        let tree = replay(events[0].tenant.clone(), events[0].tree, &events);
        for (id, m) in tree.mandates() {
            let parent = m
                .parent()
                .map(|p| tree.mandates().get(&p).map(|p| p.issued_at()));
            assert!(
                parent.is_none_or(|p| p.is_some() && m.parent() != Some(*id)),
                "{name}: mandate {id} is in the tree under {:?}, which is not above it",
                m.parent()
            );
            assert!(tree.chain(*id).len() <= tree.mandates().len(), "{name}");
        }
    }
}
