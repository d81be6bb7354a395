#!/usr/bin/env bash
# Runs one AFL++ target for SECONDS (default 600), niced, on the seeds in
# corpus/TARGET, with findings in out/TARGET/default/{crashes,hangs}.
#
#   fuzz/run.sh TARGET [SECONDS]     e.g. fuzz/run.sh hello 600
#   fuzz/run.sh --list               the targets
#   fuzz/run.sh --seeds [GROUP...]   rewrites corpus/ from the crate's encoders (GROUP: seeds.rs main)
#
# Caps: a run of one input over 1000 ms is a hang (-t), over 512 MiB of
# memory a crash (-m). Needs `cargo install cargo-afl` (stable toolchain);
# the first `cargo afl` builds AFL++ itself with the system's cc.
set -euo pipefail
cd "$(dirname "$0")"
targets=(frame_to_relay frame_from_relay hello control_request console_request audit_recovery consent policy trusted_operators tasks_json transcript)
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
case "${1:-}" in
  ""|-h|--help) sed -n '2,12p' "$0"; exit 2 ;;
  --list) printf '%s\n' "${targets[@]}"; exit 0 ;;
  --seeds) nice -n 19 cargo afl build --release --bin seeds; "$CARGO_TARGET_DIR/release/seeds" "${@:2}"; exit 0 ;;
esac
target=$1
seconds=${2:-600}
printf '%s\n' "${targets[@]}" | grep -qx "$target" || { echo "no target $target (--list)" >&2; exit 2; }
# FUZZ_NO_BUILD=1 fuzzes the binary as built, e.g. while src/ is being edited.
[[ -n "${FUZZ_NO_BUILD:-}" ]] || nice -n 19 cargo afl build --release --bin "$target"
mkdir -p "out/$target"
# No UI (runs in the background), no CPU pinning (a shared machine),
# and the kernel's core_pattern left as it is.
AFL_NO_UI=1 AFL_NO_AFFINITY=1 AFL_SKIP_CPUFREQ=1 AFL_I_DONT_CARE_ABOUT_MISSING_CRASHES=1 \
  nice -n 19 cargo afl fuzz -V "$seconds" -t 1000 -m 512 -i "corpus/$target" -o "out/$target" \
  "$CARGO_TARGET_DIR/release/$target" > "out/$target/afl.log" 2>&1 || true
stats=out/$target/default/fuzzer_stats
crashes=$(find "out/$target/default/crashes" -type f -name 'id:*' 2>/dev/null | wc -l)
hangs=$(find "out/$target/default/hangs" -type f -name 'id:*' 2>/dev/null | wc -l)
get() { awk -F' *: *' -v k="$1" '$1==k {print $2}' "$stats"; }
echo "$target: run_time=$(get run_time)s execs=$(get execs_done) corpus=$(get corpus_count) edges=$(get edges_found)/$(get total_edges) crashes=$crashes hangs=$hangs"
