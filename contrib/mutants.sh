#!/usr/bin/env bash
# cargo-mutants on the code that decides (issue 18 item 3): every mutant
# that builds must make a test fail.
#
#   contrib/mutants.sh                    each decision file with the tests that cover it
#   contrib/mutants.sh FILE [ARGS]        one of them (its tests as below), ARGS to cargo mutants
#                                         (`-F REGEX`: rerun the mutants that matched, e.g. missed ones)
#   contrib/mutants.sh --in-diff [BASE]   the lines this branch changes since BASE (default main),
#                                         against the whole test suite
#   contrib/mutants.sh --list             the mutants, without running them
#
# Needs `cargo install cargo-mutants`. Runs niced, one job at a time (see
# below), results in target/mutants/<name>/mutants.out
# (caught.txt, missed.txt, timeout.txt, unviable.txt). Exits non-zero when
# a mutant is missed or times out. Mutants not run, each with why, are in
# .cargo/mutants.toml (read by every cargo-mutants run).
set -euo pipefail
cd "$(dirname "$0")/.."

# FILE, the test targets that exercise it (given to every cargo call, so a
# mutant builds only those), after `|` a test name filter (words: any of
# them), and after a second `|` a regex of the mutants to run (`-F`; all of
# the file's without it). Unit tests beside the code where they cover it
# (one build of the lib's tests per mutant), else the integration tests
# that attack it.
declare -A tests=(
  [src/daemon/gate.rs]="--lib|daemon::gate"
  [src/daemon/replay.rs]="--lib|daemon::replay daemon::gate"
  [src/daemon/control_request.rs]="--test=decoders|control_request"
  [src/consent.rs]="--lib --test=grant_scope|"
  [src/audit/chain.rs]="--lib|audit::"
  [src/audit/log.rs]="--lib --test=audit_log|"
  [src/audit/read.rs]="--lib --test=audit_log|"
  [src/policy/rules.rs]="--lib --test=catalogue|"
  [src/protocol/signed.rs]="--lib|protocol::"
  [src/protocol/answer.rs]="--lib|protocol::"
  [src/trust.rs]="--test=trust|"
  # The console's request checks: the session cookie and CSRF token
  # (sessions.rs), then route, Host, cookie, Sec-Fetch-Site, Origin, CSRF,
  # Content-Type and the allow body in the pure decoder the server calls
  # (console_request.rs), against its unit tests and the decoder proptests.
  [src/daemon/console/sessions.rs]="--lib|daemon::console"
  [src/daemon/console_request.rs]="--lib --test=decoders|console_request"
)
order=(src/daemon/gate.rs src/daemon/control_request.rs src/daemon/replay.rs src/protocol/signed.rs
  src/protocol/answer.rs src/trust.rs src/audit/chain.rs src/daemon/console/sessions.rs src/daemon/console_request.rs
  src/consent.rs src/policy/rules.rs src/audit/log.rs src/audit/read.rs)

# A target dir of its own: cargo names a path package's artifacts by its
# path relative to the workspace, so the mutated copy and this tree would
# share artifacts in one target dir, and a build of one can pass for the
# other's (a mutant "missed" that was never built). MUTANTS_TARGET_DIR to move it.
export CARGO_TARGET_DIR="${MUTANTS_TARGET_DIR:-$PWD/target/mutants/build}"
jobs=${MUTANTS_JOBS:-1}
# One job only: cargo-mutants' jobs would share this one target dir, and a
# job's mutant then built "Fresh" from the other job's artifacts (seen with
# -j 2: two mutants tested on one build), so a result could be another's.
if [[ $jobs != 1 ]]; then
  echo "MUTANTS_JOBS=$jobs: the jobs would share $CARGO_TARGET_DIR and test each other's builds; run one" >&2
  exit 2
fi
# A failing property is a caught mutant: shrinking it to a small case is
# for a human reading a failure, and can take minutes.
export PROPTEST_MAX_SHRINK_ITERS=${PROPTEST_MAX_SHRINK_ITERS:-0}
# No debug info for this crate (its dependencies keep theirs, so they stay
# built): a mutant's build is mostly this crate's compile and link.
common=(--no-shuffle -j "$jobs" --timeout "${MUTANTS_TIMEOUT:-300}" --minimum-test-timeout 60
  --cargo-arg=--config=profile.dev.package.support.debug=0)

run_file() {
  local file=$1 name targets filter re args=("${@:2}")
  name=$(basename "${file%.rs}")
  mkdir -p "target/mutants/$name"
  IFS='|' read -r targets filter re <<< "${tests[$file]}"
  for t in $targets; do args+=("--cargo-arg=$t"); done
  [[ -z $re ]] || args+=(-F "$re")
  # The filter's words go to the test binaries, after cargo test's own
  # `--` (cargo test itself takes one name only).
  if [[ -n $filter ]]; then
    args+=(--cargo-test-arg=--)
    for word in $filter; do args+=("--cargo-test-arg=$word"); done
  fi
  nice -n 19 cargo mutants "${common[@]}" --file "$file" --output "target/mutants/$name" "${args[@]}"
}

case "${1:-}" in
  --list)
    for f in "${order[@]}"; do cargo mutants --list --file "$f"; done ;;
  --in-diff)
    base=${2:-main}
    mkdir -p target/mutants/diff
    git diff "$base...HEAD" > target/mutants/branch.diff
    nice -n 19 cargo mutants "${common[@]}" --in-diff target/mutants/branch.diff --output target/mutants/diff ;;
  "")
    status=0
    for f in "${order[@]}"; do run_file "$f" || status=$?; done
    exit "$status" ;;
  *)
    [[ -n "${tests[$1]:-}" ]] || { echo "not a decision file: $1 (see the table in $0)" >&2; exit 2; }
    run_file "$@" ;;
esac
