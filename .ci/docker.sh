#!/usr/bin/env bash
# Bring up a local Docker Engine and the offline base image that the test and
# example services build FROM. Idempotent: every step is skipped when its result
# is already present, so a second run takes well under a second.
#
# Usage (as root):  bash .ci/docker.sh      or      source .ci/docker.sh
#   DOCKERD_LOG   where dockerd writes its log (default ./dockerd.log)
#
# This machine has no bridge networking and no registry: containers use host
# networking, and python:3.11-slim-bookworm is made from Debian's packages with
# debootstrap and tagged under the official name (interpreter: python3, no pip).
#
# When sourced, it runs itself in a child bash so that `set -euo pipefail` and
# its traps do not leak into the caller; the caller gets its exit status.

if [ "${BASH_SOURCE[0]}" != "$0" ]; then
    bash "${BASH_SOURCE[0]}"
    return $?
fi

set -euo pipefail

base_image="python:3.11-slim-bookworm"
log="${DOCKERD_LOG:-./dockerd.log}"
wait_s="${DOCKERD_WAIT:-60}"
apt_updated=0

say() { echo "[docker.sh] $*"; }
apt_install() {
    if [ "$apt_updated" = 0 ]; then
        DEBIAN_FRONTEND=noninteractive apt-get update -q >/dev/null
        apt_updated=1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$@" >/dev/null
}

# 1. engine package
if command -v dockerd >/dev/null 2>&1 && command -v docker >/dev/null 2>&1; then
    say "dockerd present ($(command -v dockerd)): skip install"
else
    say "dockerd missing: apt-get install docker.io"
    apt_install docker.io
fi

# 2. engine process
if docker info >/dev/null 2>&1; then
    say "docker engine already answering: skip start"
else
    pidfile=/var/run/docker.pid
    if [ -s "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then
        say "dockerd already running (pid $(cat "$pidfile")) but not answering yet: waiting"
    else
        say "starting dockerd (log: $log)"
        setsid dockerd --bridge=none --iptables=false --ip-masq=false \
            >"$log" 2>&1 </dev/null &
    fi
    t0=$SECONDS
    until docker info >/dev/null 2>&1; do
        if [ $((SECONDS - t0)) -ge "$wait_s" ]; then
            echo "[docker.sh] ERROR: docker engine did not answer within ${wait_s}s; last lines of $log:" >&2
            tail -n 30 "$log" >&2 || true
            exit 1
        fi
        sleep 0.5
    done
    say "docker engine up after $((SECONDS - t0))s"
fi

# 3. base image
if docker image inspect "$base_image" >/dev/null 2>&1; then
    say "image $base_image present: skip build"
else
    if command -v debootstrap >/dev/null 2>&1; then
        say "debootstrap present: skip install"
    else
        say "debootstrap missing: apt-get install debootstrap"
        apt_install debootstrap
    fi
    say "building $base_image with debootstrap (about a minute)"
    t0=$SECONDS
    root=$(mktemp -d /tmp/jobnode-rootfs.XXXXXX)
    trap 'rm -rf "$root"' EXIT
    debootstrap --variant=minbase --include=python3 bookworm "$root" \
        >"$root.debootstrap.log" 2>&1 || {
        echo "[docker.sh] ERROR: debootstrap failed; see $root.debootstrap.log" >&2
        tail -n 30 "$root.debootstrap.log" >&2
        exit 1
    }
    tar -C "$root" -c . | docker import -c 'CMD ["python3"]' - "$base_image" >/dev/null
    rm -rf "$root" "$root.debootstrap.log"
    trap - EXIT
    say "built $base_image in $((SECONDS - t0))s; removed temp rootfs"
fi
