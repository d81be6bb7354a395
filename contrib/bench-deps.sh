#!/bin/sh
# Installs what the benches need beside the crate: nats-server (JetStream)
# and mosquitto for `cargo bench --bench cluster` (the relay memory
# baseline), mosquitto and mosquitto_sub (mosquitto-clients) for `cargo
# bench --bench daemon` (the idle daemon's baseline). Idempotent; Debian
# packages, run as root. The benches are not part of .ci/run.
set -eu
missing=""
command -v nats-server >/dev/null 2>&1 || missing="$missing nats-server"
command -v mosquitto >/dev/null 2>&1 || missing="$missing mosquitto"
command -v mosquitto_sub >/dev/null 2>&1 || missing="$missing mosquitto-clients"
[ -z "$missing" ] && exit 0
apt-get update -qq
# shellcheck disable=SC2086
apt-get install -y -qq $missing
