#!/usr/bin/env bash
# README's "Deploy for real", run as written, on this one machine and on
# loopback, with the installed Debian package. CI runs it after `dpkg -i`.
#
#   dpkg -i target/debian/support_*.deb && contrib/walkthrough.sh
#
# Every command it runs is a line of that README section, found there
# verbatim (so a README that changes without this script fails here), with
# its placeholders replaced by what the earlier steps printed:
#   0.0.0.0:8443         -> 127.0.0.1:8443 (the relay listens on loopback only)
#   sha256:de79fc35...   -> the relay's certificate fingerprint
#   ed25519:AIwg...      -> the operator's public key
#   et-...               -> the enrollment token
#   d-8eda388185d6c050ac67 -> the device
# relay.example.com resolves to 127.0.0.1 for the run, by a line in
# /etc/hosts that is removed at exit.
#
# It needs root and a machine where systemd is not running (a container, CI):
# where systemd runs it would install and start real services. So the relay
# service runs as systemd would run it: the unit's ExecStart, as its User=,
# with its EnvironmentFile and StateDirectory; and the owner's
# `support service install` takes its no-systemd path (writes daemon.toml,
# prints the foreground command, exit 1), whose command is then run.
# `sudo -u support-relay CMD` runs CMD as that user with setpriv(1). The
# operator and the owner are two homes in a temporary directory.
set -euo pipefail
cd "$(dirname "$0")/.."

fail() { echo "walkthrough: $*" >&2; exit 1; }
[ "$(id -u)" = 0 ] || fail "needs root (it installs /etc/default/support-relay and runs the relay as its user)"
[ ! -d /run/systemd/system ] || fail "systemd is running here: this script would start real services; run it in a container or CI"
command -v setpriv >/dev/null || fail "setpriv (util-linux) is needed to run commands as support-relay"
version=$(dpkg-query -W -f '${Version}' support 2>/dev/null) || fail "the support package is not installed (dpkg -i target/debian/support_*.deb)"
[ "$(dpkg -S /usr/bin/support 2>/dev/null | cut -d: -f1)" = support ] || fail "/usr/bin/support is not the package's"

section=$(awk '/^## Deploy for real$/ {on=1; print; next} on && /^## / {exit} on' README.md)
[ -n "$section" ] || fail "README.md has no '## Deploy for real' section"

# Sets L to README's line $1, after checking that it is there verbatim
# (not in a command substitution: a failure there would not stop the script).
readme() {
  grep -qxF -- "$1" <<<"$section" || fail "README's Deploy for real has no line: $1"
  L=$1
}

# The placeholders of README's lines, and what stands for them in this run.
fp=""; key=""; token=""; device=""
fill() {
  local l=$1
  l=${l//0.0.0.0:8443/127.0.0.1:8443}
  [ -z "$fp" ] || l=${l//sha256:de79fc35d11b21c1c1d4eaa9af55651d7e767141c901823da674659eda6b1e51/$fp}
  [ -z "$key" ] || l=${l//ed25519:AIwgGtZml7ZTWA9V9BTXhoz6af_uLZBgoFQxuD3UyFc/$key}
  [ -z "$token" ] || l=${l//et-.../$token}
  [ -z "$device" ] || l=${l//d-8eda388185d6c050ac67/$device}
  printf '%s' "$l"
}

# A fresh relay: what the run leaves in its state directory is removed at exit.
relay_state=/var/lib/support-relay
if [ -n "$(ls -A "$relay_state" 2>/dev/null)" ]; then
  fail "$relay_state is not empty: the walkthrough is for a fresh install (dpkg --purge support; rm -rf $relay_state)"
fi
tmp=$(mktemp -d /tmp/support-walkthrough.XXXXXX)
chmod 755 "$tmp"
defaults=/etc/default/support-relay
pids=()
cleanup() {
  local rc=$?
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  # 15 s (the units' TimeoutStopSec), then SIGKILL: cleanup never hangs.
  for _ in $(seq 150); do
    alive=0; for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
    [ "$alive" = 0 ] && break; sleep 0.1
  done
  for pid in "${pids[@]}"; do kill -KILL "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; done
  [ ! -f "$tmp/default.orig" ] || cp -p "$tmp/default.orig" "$defaults" || true
  # Rewritten in place, not renamed over: in a container /etc/hosts is a bind mount.
  { grep -v ' relay.example.com # support walkthrough$' /etc/hosts || true; } > "$tmp/hosts"
  if grep -q localhost "$tmp/hosts"; then cat "$tmp/hosts" > /etc/hosts; fi
  find "$relay_state" -mindepth 1 -delete 2>/dev/null || true
  if [ "$rc" != 0 ]; then
    for f in "$tmp"/*.log; do [ -f "$f" ] && { echo "--- $f"; tail -n 40 "$f"; }; done >&2
  fi
  rm -rf "$tmp"
  exit "$rc"
}
trap cleanup EXIT
cp -p "$defaults" "$tmp/default.orig"

# A person's shell: their own home, nothing inherited but PATH.
as() {
  local home=$1; shift
  env -i PATH=/usr/bin:/bin:/usr/sbin:/sbin HOME="$home" LANG=C.UTF-8 bash -c "$1"
}
# The admin's line: `sudo -u USER CMD` runs CMD as USER; `sudo CMD` as root.
as_admin() {
  local l=$1 user
  case $l in
    "sudo -u "*)
      l=${l#sudo -u }; user=${l%% *}; l=${l#"$user" }
      setpriv --reuid="$user" --regid="$user" --init-groups \
        env -i PATH=/usr/bin:/bin HOME="/var/lib/$user" LANG=C.UTF-8 bash -c "$l" ;;
    "sudo "*) as /root "${l#sudo }" ;;
    *) fail "not an admin line: $l" ;;
  esac
}
# Waits (up to 30 s) until CMD succeeds: for a service that reports only in its log.
# Fails at once when one of the services it started has exited.
await() {
  local what=$1; shift
  for _ in $(seq 300); do
    "$@" && return 0
    for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null || fail "no $what: a service exited"; done
    sleep 0.1
  done
  fail "no $what within 30 s"
}

operator="$tmp/operator"; owner="$tmp/owner"
mkdir -p "$operator" "$owner"
[ -w /etc/hosts ] || fail "/etc/hosts is not writable: relay.example.com cannot be made to mean 127.0.0.1"
printf '127.0.0.1 relay.example.com # support walkthrough\n' >> /etc/hosts
if (exec 3</dev/tcp/127.0.0.1/8443) 2>/dev/null; then fail "127.0.0.1:8443 is taken: the walkthrough's relay listens there"; fi

echo "== 1. The relay"
readme "sudo apt install ./support_0.1.0-1_amd64.deb"
deb="$L"
[ "support_${version}_$(dpkg --print-architecture).deb" = "${deb#sudo apt install ./}" ] \
  || fail "README installs ${deb#sudo apt install ./}, the package installed is support_${version}"
echo "installed: $deb (support $version)"
id support-relay >/dev/null || fail "the package made no support-relay user"
readme "SUPPORT_RELAY_SERVE=--listen 0.0.0.0:8443 --self-signed --san relay.example.com"
{ fill "$L"; echo; } > "$defaults"
readme "sudo systemctl enable --now support-relay"
unit=/usr/lib/systemd/system/support-relay.service
user=$(sed -n 's/^User=//p' "$unit"); state=/var/lib/$(sed -n 's/^StateDirectory=//p' "$unit")
exec_start=$(sed -n 's/^ExecStart=//p' "$unit"); envfile=$(sed -n 's/^EnvironmentFile=-\{0,1\}//p' "$unit")
[ "$state" = "$relay_state" ] && [ -n "$user" ] && [ -n "$exec_start" ] && [ -n "$envfile" ] \
  || fail "$unit is not the unit this script knows (User=, StateDirectory=, ExecStart=, EnvironmentFile=)"
install -d -o "$user" -g "$user" -m "$(sed -n 's/^StateDirectoryMode=//p' "$unit")" "$state"
(
  # EnvironmentFile: KEY=VALUE lines, # comments; $VAR in ExecStart splits at spaces.
  while IFS= read -r l; do
    case $l in ''|'#'*) ;; *=*) export "${l%%=*}=${l#*=}" ;; esac
  done < "$envfile"
  exec setpriv --reuid="$user" --regid="$user" --init-groups env HOME="$state" sh -c "exec $exec_start"
) > "$tmp/relay.log" 2>&1 &
pids+=($!)
await "certificate fingerprint in the relay's log" grep -q '^certificate fingerprint sha256:' "$tmp/relay.log"
readme "sudo journalctl -u support-relay | grep fingerprint"
fp=$(grep -o 'sha256:[0-9a-f]\{64\}' "$tmp/relay.log" | head -n 1)
echo "relay up; $fp"

readme "sudo -u support-relay support relay --state /var/lib/support-relay enroll-token --ttl 1h"
enroll=$(as_admin "$L" 2>"$tmp/enroll.log")
token=$(grep -o '^et-[A-Za-z0-9_-]*$' <<<"$enroll") || fail "enroll-token printed no token: $enroll"
echo "token made (not shown)"

echo "== 2. The operator's laptop"
readme "support operator init --relay wss://relay.example.com:8443 --relay-ca system"
readme "support operator init --relay wss://relay.example.com:8443 --relay-fingerprint sha256:de79fc35d11b21c1c1d4eaa9af55651d7e767141c901823da674659eda6b1e51"
key=$(as "$operator" "$(fill "$L")" 2>"$tmp/init.log" | grep -o '^ed25519:[A-Za-z0-9_-]*$') \
  || fail "operator init printed no public key"
[ -f "$operator/.config/support/operator.toml" ] || fail "operator init wrote no operator.toml"
echo "operator key $key"
readme "sudo -u support-relay support relay --state /var/lib/support-relay add-operator alice ed25519:AIwgGtZml7ZTWA9V9BTXhoz6af_uLZBgoFQxuD3UyFc"
as_admin "$(fill "$L")"

echo "== 3. The owner's machine"
readme "support trust add alice ed25519:AIwgGtZml7ZTWA9V9BTXhoz6af_uLZBgoFQxuD3UyFc"
as "$owner" "$(fill "$L")"
readme "support service install --relay wss://relay.example.com:8443 --relay-fingerprint sha256:de79fc35d11b21c1c1d4eaa9af55651d7e767141c901823da674659eda6b1e51 --enroll et-..."
install_line=$(fill "$L")
grep -qxF "  $install_line" "$tmp/enroll.log" || fail "enroll-token's line for the owner is not README's: $(cat "$tmp/enroll.log")"
set +e; as "$owner" "$install_line" 2>"$tmp/install.log"; rc=$?; set -e
[ "$rc" = 1 ] && grep -q 'systemd is not running' "$tmp/install.log" || fail "service install without systemd: exit $rc"
foreground=$(grep -A1 'in the foreground' "$tmp/install.log" | tail -n 1 | sed 's/^ *//')
[ "$foreground" = "support daemon" ] || [ "$foreground" = "/usr/bin/support daemon" ] || fail "service install printed no foreground command"
# exec all the way down, so the pid kept is the daemon's own (cleanup stops it).
(exec env -i PATH=/usr/bin:/bin:/usr/sbin:/sbin HOME="$owner" LANG=C.UTF-8 bash -c "exec $foreground") > "$tmp/daemon.log" 2>&1 &
pids+=($!)
readme "support status"
status_cmd=$L
connected() { grep -q 'connected to wss://relay.example.com:8443 since' <<<"$(as "$owner" "$status_cmd" 2>/dev/null)"; }
await "connection to the relay in support status" connected
status=$(as "$owner" "$status_cmd")
echo "$status"
device=$(grep -o 'd-[0-9a-f]\{20\}' <<<"$status" | head -n 1) || fail "support status names no device"
readme 'support allow --tier 1 --minutes 30 --reason "disk full?"'
as "$owner" "$L"

echo "== 4. Support at work"
readme "sudo -u support-relay support relay --state /var/lib/support-relay devices"
out=$(as_admin "$L") || fail "relay devices failed"
grep -q "$device" <<<"$out" \
  || fail "the relay's devices does not list $device"
readme "support operator devices"
devices=$(as "$operator" "$L") || fail "operator devices failed"
echo "$devices"
grep "$device" <<<"$devices" | grep -q 'yes' || fail "operator devices: $device not online"
readme "support operator run d-8eda388185d6c050ac67 disk-usage"
out=$(as "$operator" "$(fill "$L")")
grep -q '^Filesystem' <<<"$out" || fail "disk-usage printed no df table: $out"
echo "$out"
readme "support operator run d-8eda388185d6c050ac67 restart-user-service unit=foo.service"
set +e; out=$(as "$operator" "$(fill "$L")" 2>&1); rc=$?; set -e
[ "$rc" = 4 ] && grep -q 'TIER_INSUFFICIENT' <<<"$out" || fail "a tier-2 fix under tier 1: exit $rc: $out"
echo "$out (exit $rc)"
readme "support revoke            # a running task ends; the operator sees \"cancelled by revoke\""
as "$owner" "$L"
readme "support audit             # every grant, command, denial and stop, newest first"
out=$(as "$owner" "$L") || fail "support audit failed"
grep -q 'disk-usage' <<<"$out" \
  || fail "support audit does not show the disk-usage run"
readme "support audit --verify    # ok: N records"
out=$(as "$owner" "$L") || fail "support audit --verify failed"
grep -q '^ok' <<<"$out" || fail "support audit --verify is not ok"
echo "walkthrough: every step of README's Deploy for real behaved as written."
