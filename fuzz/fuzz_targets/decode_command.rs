//! Fuzz target `decode_command`: see `checks::decode_command` for the property.
#![no_main]

#[allow(dead_code)] // each target uses one of the checks
#[path = "../checks.rs"]
mod checks;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    checks::decode_command(data);
});
