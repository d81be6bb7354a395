#!/usr/bin/env bash
# Builds the Debian package: target/debian/support_VERSION-1_ARCH.deb.
#
#   contrib/deb.sh            # prints the .deb's path on its last line
#
# Needs cargo-deb (`cargo install cargo-deb --locked --version 3.6.2`, as
# .ci/run does) and dpkg. The binary is built with the profile in
# SUPPORT_DEB_PROFILE (default `dist`: fat LTO, one codegen unit, opt-level
# s, see Cargo.toml); the completions and man pages are
# written by that binary from its own clap definitions into target/assets
# (under the checkout, whatever CARGO_TARGET_DIR says), which Cargo.toml's
# [package.metadata.deb] assets name.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v cargo-deb >/dev/null 2>&1; then
  echo "deb: cargo-deb is not installed: cargo install cargo-deb --locked --version 3.6.2" >&2
  exit 1
fi
profile=${SUPPORT_DEB_PROFILE:-dist}
# build.rs records the commit for `support version`.
SUPPORT_COMMIT=${SUPPORT_COMMIT:-$(git rev-parse --short=12 HEAD 2>/dev/null || echo unknown)}
export SUPPORT_COMMIT

cargo build --locked --profile "$profile" --bin support
target_dir=$(cargo metadata --format-version 1 --no-deps | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
[ -d "$target_dir" ] || { echo "deb: cannot find cargo's target directory" >&2; exit 1; }
bin="$target_dir/$profile/support"

assets=target/assets
rm -rf "$assets"
mkdir -p "$assets/completions" "$assets/man"
"$bin" completions bash > "$assets/completions/support.bash"
"$bin" completions zsh > "$assets/completions/_support"
"$bin" completions fish > "$assets/completions/support.fish"
"$bin" man "$assets/man" >/dev/null
[ -s "$assets/man/support.1" ] || { echo "deb: support man wrote no support.1" >&2; exit 1; }

# cargo-deb prints the .deb's path on stdout; its errors stay on stderr.
cargo deb --no-build --profile "$profile"
