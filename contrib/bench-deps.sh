#!/bin/sh
# Installs what `cargo bench --bench cluster` needs beside the crate:
# nats-server (JetStream) and mosquitto (the memory baseline). Idempotent;
# Debian packages, run as root. The benches are not part of .ci/run.
set -eu
missing=""
command -v nats-server >/dev/null 2>&1 || missing="$missing nats-server"
command -v mosquitto >/dev/null 2>&1 || missing="$missing mosquitto"
[ -z "$missing" ] && exit 0
apt-get update -qq
# shellcheck disable=SC2086
apt-get install -y -qq $missing
