#!/usr/bin/env bash
# Builds the fuzz targets and runs each for SECONDS seconds (default 30).
#
#   bash fuzz/run.sh [SECONDS] [TARGET...]
#
# Stable toolchain, no cargo-fuzz and no nightly: libfuzzer-sys compiles
# libFuzzer itself (it needs a C++ compiler, g++ or clang++: `apt-get install
# -y g++` on a bare machine), and the coverage instrumentation that libFuzzer
# reads is switched on with stable rustc flags (`-Cpasses=sancov-module` and
# LLVM's sanitizer-coverage options), the ones cargo-fuzz uses with
# `--sanitizer none`. No AddressSanitizer (that needs nightly): the targets
# are safe Rust, and what they look for is panics and broken properties.
# `--target <host>` keeps the flags off build scripts and proc macros.
#
# The build goes to target/fuzz (fuzz/.cargo/config.toml). Each run starts
# from the saved inputs (tests/corpus/fuzz/<target>/) and the seeds
# (fuzz/seeds/<target>/); what it learns goes to target/fuzz/corpus/<target>,
# and an input that breaks a property to target/fuzz/artifacts/<target>/:
# copy it to tests/corpus/fuzz/<target>/, where tests/fuzz_regressions.rs
# replays it in every `cargo test`. Exits non-zero if any target fails.
set -euo pipefail
cd "$(dirname "$0")"
seconds="${1:-30}"
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  targets=(decode_command decode_wire scope_covers)
fi

host=$(rustc -vV | sed -n 's/^host: //p')
export RUSTFLAGS="${RUSTFLAGS:-} --cfg fuzzing -Cpasses=sancov-module \
-Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters \
-Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares"
echo "== building fuzz targets (release, $host): ${targets[*]}"
cargo build --release --target "$host" $(printf -- '--bin %s ' "${targets[@]}")

out=../target/fuzz
status=0
for t in "${targets[@]}"; do
  mkdir -p "$out/corpus/$t" "$out/artifacts/$t" "../tests/corpus/fuzz/$t" "seeds/$t"
  echo "== fuzzing $t for ${seconds}s"
  if ! "$out/$host/release/$t" -max_total_time="$seconds" -print_final_stats=1 \
      -artifact_prefix="$out/artifacts/$t/" -max_len=4096 \
      "$out/corpus/$t" "../tests/corpus/fuzz/$t" "seeds/$t" 2>"$out/$t.log"; then
    echo "!! $t failed; its log: target/fuzz/$t.log, the input: target/fuzz/artifacts/$t/" >&2
    tail -n 40 "$out/$t.log" >&2
    status=1
  fi
  grep -E '^stat::number_of_executed_units|^stat::new_units_added' "$out/$t.log" || true
done
exit $status
