//! Fuzz target `scope_covers`: see `checks::scope_covers` for the property.
#![no_main]

#[allow(dead_code)] // each target uses one of the checks
#[path = "../checks.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    checks::scope_covers(data);
});
