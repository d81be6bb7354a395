#!/usr/bin/env bash
# The whole `support operator run DEVICE memory` process beside
# `ssh -S CTL host free -h -w` over an open OpenSSH ControlMaster, in one
# run on this machine (DESIGN §9: median <= 0.1 x ssh).
#
# Starts, all on 127.0.0.1 and all thrown away at the end:
#   - a relay (`support relay serve --self-signed`) on an ephemeral port;
#   - a daemon enrolled to it, under a tier-1 grant, in a temporary home;
#   - two sshds on free ports with a throwaway host key, accepting only a
#     throwaway user key, and a ControlMaster connection to each.
# Two ssh baselines: the remote command as the user's shell runs it (bash
# reads ~/.bashrc under sshd), and with the rc files skipped (the session
# sets SHLVL=1), which is ssh's own cost and the stricter yardstick.
# Then times RUNS (default 200, at most 2000) runs of each with hyperfine,
# interleaved by taking turns in batches, and prints both medians and the ratio.
#
# Usage: benches/operator_vs_ssh.sh            (builds target/release/support)
#        SUPPORT_BIN=path/to/support RUNS=50 benches/operator_vs_ssh.sh
# Needs: hyperfine, ssh, sshd (Debian: apt-get install -y hyperfine
# openssh-client openssh-server), python3 or jq for the JSON.
set -euo pipefail
cd "$(dirname "$0")/.."

runs=${RUNS:-200}
if ! [[ $runs =~ ^[0-9]+$ ]] || ((runs < 5 || runs > 2000)); then
  echo "operator_vs_ssh: RUNS must be 5..2000 (got $runs)" >&2
  exit 2
fi

missing=()
command -v hyperfine >/dev/null || missing+=("hyperfine (apt-get install -y hyperfine)")
command -v ssh >/dev/null || missing+=("ssh (apt-get install -y openssh-client)")
sshd=$(command -v sshd || true)
[[ -z $sshd && -x /usr/sbin/sshd ]] && sshd=/usr/sbin/sshd
[[ -n $sshd ]] || missing+=("sshd (apt-get install -y openssh-server)")
command -v ssh-keygen >/dev/null || missing+=("ssh-keygen (apt-get install -y openssh-client)")
command -v python3 >/dev/null || missing+=("python3")
if ((${#missing[@]})); then
  printf 'operator_vs_ssh: missing: %s\n' "${missing[@]}" >&2
  exit 1
fi

bin=${SUPPORT_BIN:-}
if [[ -z $bin ]]; then
  cargo build --release --quiet
  bin="${CARGO_TARGET_DIR:-target}/release/support"
fi
bin=$(realpath "$bin")

work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for c in "$work"/*.ctl; do [[ -S $c ]] && ssh -S "$c" -O exit x 2>/dev/null; done || true
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

# --- the relay, the owner's daemon and the operator's key ------------------
state=$work/relay home=$work/owner
"$bin" relay --state "$state" serve --self-signed --listen 127.0.0.1:0 >"$work/relay.out" 2>"$work/relay.log" &
pids+=($!)
addr=
for _ in $(seq 1 200); do
  addr=$(sed -n 's/^listening on //p' "$work/relay.out")
  [[ -n $addr ]] && break
  sleep 0.05
done
[[ -n $addr ]] || { echo "operator_vs_ssh: the relay did not start; log:" >&2; cat "$work/relay.log" >&2; exit 1; }
pub=$("$bin" operator keygen --out "$work/op.key" 2>/dev/null)
"$bin" relay --state "$state" add-operator bench "$pub" >/dev/null
token=$("$bin" relay --state "$state" enroll-token 2>/dev/null)
SUPPORT_HOME=$home "$bin" trust add bench "$pub" >/dev/null
SUPPORT_HOME=$home "$bin" allow --tier 1 --minutes 60 >/dev/null 2>&1
SUPPORT_HOME=$home "$bin" daemon --relay "wss://$addr" --relay-ca "$state/cert.pem" --enroll "$token" 2>"$work/daemon.log" &
pids+=($!)
device=
for _ in $(seq 1 600); do
  status=$(SUPPORT_HOME=$home "$bin" status --json 2>/dev/null || true)
  device=$(printf '%s' "$status" | python3 -c 'import json,sys
try: s=json.load(sys.stdin)
except Exception: sys.exit()
if (s.get("daemon") or {}).get("connected"): print(s["device_id"])' || true)
  [[ -n $device ]] && break
  sleep 0.05
done
[[ -n $device ]] || { echo "operator_vs_ssh: the daemon never connected; log:" >&2; cat "$work/daemon.log" >&2; exit 1; }
export SUPPORT_OPERATOR_RELAY="wss://$addr" SUPPORT_OPERATOR_RELAY_CA="$state/cert.pem" SUPPORT_OPERATOR_KEY="$work/op.key"
"$bin" operator run "$device" memory >/dev/null 2>&1 || { echo "operator_vs_ssh: operator run failed" >&2; exit 1; }

# --- sshd on a free loopback port, a ControlMaster to it -------------------
ssh-keygen -q -t ed25519 -N '' -f "$work/host_key"
ssh-keygen -q -t ed25519 -N '' -f "$work/user_key"
cp "$work/user_key.pub" "$work/authorized_keys"
chmod 600 "$work/authorized_keys"
mkdir -p /run/sshd 2>/dev/null || true
# start_sshd NAME [EXTRA CONFIG LINE]: an sshd on a free loopback port and a
# ControlMaster to it at $work/NAME.ctl; the port goes to $port.
start_sshd() {
  local name=$1 extra=${2:-}
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  cat >"$work/$name.sshd_config" <<EOF
ListenAddress 127.0.0.1
Port $port
HostKey $work/host_key
PidFile $work/$name.sshd.pid
AuthorizedKeysFile $work/authorized_keys
PasswordAuthentication no
KbdInteractiveAuthentication no
PubkeyAuthentication yes
UsePAM no
StrictModes no
PermitRootLogin prohibit-password
$extra
EOF
  "$sshd" -D -e -f "$work/$name.sshd_config" </dev/null >/dev/null 2>"$work/$name.sshd.log" &
  pids+=($!)
  for _ in $(seq 1 100); do
    python3 -c "import socket; socket.create_connection(('127.0.0.1',$port),0.2)" 2>/dev/null && break
    sleep 0.05
  done
  ssh -F /dev/null -o BatchMode=yes -o StrictHostKeyChecking=no -o "UserKnownHostsFile=$work/known_hosts" \
    -o "IdentityFile=$work/user_key" -o IdentitiesOnly=yes -o LogLevel=ERROR -p "$port" \
    -o ControlMaster=yes -o "ControlPath=$work/$name.ctl" -o ControlPersist=yes -f -N 127.0.0.1 </dev/null >/dev/null \
    || { echo "operator_vs_ssh: could not open a ControlMaster; sshd log:" >&2; cat "$work/$name.sshd.log" >&2; exit 1; }
  ssh -S "$work/$name.ctl" -p "$port" 127.0.0.1 free -h -w >/dev/null
}
# bash reads ~/.bashrc when sshd starts it (SSH_CLIENT set, SHLVL unset);
# SHLVL=1 in the session's environment skips that.
start_sshd rc
rc_port=$port
start_sshd bare "SetEnv SHLVL=1"
bare_port=$port

# --- all three, side by side -----------------------------------------------
support_cmd="$bin operator run $device memory"
ssh_rc="ssh -S $work/rc.ctl -p $rc_port 127.0.0.1 free -h -w"
ssh_bare="ssh -S $work/bare.ctl -p $bare_port 127.0.0.1 free -h -w"
local_cmd=$(command -v free)" -h -w"
batches=5
per=$(((runs + batches - 1) / batches))
for n in support ssh_rc ssh_bare local; do : >"$work/$n.times"; done
for b in $(seq 1 $batches); do
  hyperfine -N --warmup 3 --runs "$per" --export-json "$work/h$b.json" "$support_cmd" "$ssh_rc" "$ssh_bare" "$local_cmd" \
    >/dev/null 2>"$work/hyperfine.log" \
    || { echo "operator_vs_ssh: hyperfine failed:" >&2; cat "$work/hyperfine.log" >&2; exit 1; }
  python3 - "$work/h$b.json" "$work/support.times" "$work/ssh_rc.times" "$work/ssh_bare.times" "$work/local.times" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1]))["results"]
for res, path in zip(r, sys.argv[2:]):
    with open(path, "a") as f:
        f.writelines(f"{t}\n" for t in res["times"])
EOF
done
python3 - "$work" "$per" "$batches" <<'EOF'
import statistics, sys
work, per, batches = sys.argv[1], sys.argv[2], sys.argv[3]
t = {n: [float(l) * 1000 for l in open(f"{work}/{n}.times")] for n in ("support", "ssh_rc", "ssh_bare", "local")}
def p(v, q): v = sorted(v); return v[min(len(v) - 1, int(len(v) * q))]
m = {n: statistics.median(v) for n, v in t.items()}
print(f"# benches/operator_vs_ssh.sh: {len(t['support'])} runs each, {batches} interleaved batches of {per}")
print("| what | median (ms) | p90 (ms) |")
print("|---|---:|---:|")
rows = [("support", "support operator run DEVICE memory (whole process)"),
        ("ssh_rc", "baseline: ssh -S CTL host free -h -w, the remote shell as configured (reads ~/.bashrc)"),
        ("ssh_bare", "baseline: the same with the remote rc files skipped (sshd SetEnv SHLVL=1)"),
        ("local", "for scale: free -h -w run here, no remote at all")]
for n, label in rows:
    print(f"| {label} | {m[n]:.2f} | {p(t[n], .9):.2f} |")
for n, label in (("ssh_rc", "ssh as configured"), ("ssh_bare", "ssh without rc files")):
    r = m["support"] / m[n]
    print(f"ratio to {label}: {r:.3f} x; target <= 0.1 x: {'met' if r <= 0.1 else 'NOT met'}")
EOF
