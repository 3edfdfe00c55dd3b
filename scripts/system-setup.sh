#!/usr/bin/env bash
# Install and start what netorch needs on a Debian bookworm host, idempotently:
#   - Debian packages: docker.io docker-compose mmdebstrap iperf3 prometheus chromium
#     prometheus-pushgateway iproute2 (installed only when missing, without starting services)
#   - a running Docker daemon (started detached when none answers; one that runs is left alone)
# Silent when there is nothing to do; prints one line per action otherwise. Needs root.
# Env: NETORCH_DOCKERD_LOG (default /var/log/netorch-dockerd.log),
#      NETORCH_DOCKERD_WAIT (seconds to wait for the daemon, default 60).
set -euo pipefail

PACKAGES=(docker.io docker-compose mmdebstrap iperf3 prometheus prometheus-pushgateway iproute2
          chromium)  # chromium: the headless browser the compare.html test opens
DOCKER=/usr/bin/docker
DOCKERD=/usr/sbin/dockerd
DOCKERD_LOG=${NETORCH_DOCKERD_LOG:-/var/log/netorch-dockerd.log}
DOCKERD_WAIT=${NETORCH_DOCKERD_WAIT:-60}

say() { echo "system-setup: $*"; }
die() { echo "system-setup: error: $*" >&2; exit 1; }

if [[ $(id -u) -ne 0 ]]; then
    die "must run as root (apt-get and dockerd need it)"
fi

# --- Debian packages -----------------------------------------------------------------------
missing=()
for pkg in "${PACKAGES[@]}"; do
    status=$(dpkg-query -W -f='${db:Status-Status}' "$pkg" 2>/dev/null || true)
    [[ $status == installed ]] || missing+=("$pkg")
done

if ((${#missing[@]})); then
    say "installing ${missing[*]}"
    # Keep maintainer scripts from starting services (docker, prometheus on :9090,
    # pushgateway on :9091): there is no systemd here, and tests start their own servers.
    # policy-rc.d exit 101 = "action forbidden"; an existing policy file is left as it is.
    policy=/usr/sbin/policy-rc.d
    added_policy=0
    if [[ ! -e $policy ]]; then
        printf '#!/bin/sh\nexit 101\n' >"$policy"
        chmod 0755 "$policy"
        added_policy=1
    fi
    cleanup_policy() { if ((added_policy)); then rm -f "$policy"; fi; }
    trap cleanup_policy EXIT
    export DEBIAN_FRONTEND=noninteractive
    apt_log=$(mktemp)
    if ! apt-get update -q >"$apt_log" 2>&1; then
        tail -n 20 "$apt_log" >&2
        die "apt-get update failed (log above)"
    fi
    if ! apt-get install -y -q --no-install-recommends \
            -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold \
            "${missing[@]}" >"$apt_log" 2>&1; then
        tail -n 30 "$apt_log" >&2
        die "apt-get install ${missing[*]} failed (log above)"
    fi
    rm -f "$apt_log"
    cleanup_policy
    trap - EXIT
    say "installed ${missing[*]}"
fi

# --- Docker daemon -------------------------------------------------------------------------
daemon_answers() {
    timeout 10 "$DOCKER" version --format '{{.Server.Version}}' >/dev/null 2>&1
}

wait_for_daemon() {
    local deadline=$((SECONDS + DOCKERD_WAIT))
    while ((SECONDS < deadline)); do
        daemon_answers && return 0
        sleep 1
    done
    return 1
}

log_tail() {
    if [[ -f $DOCKERD_LOG ]]; then
        echo "last lines of $DOCKERD_LOG:" >&2
        tail -n 25 "$DOCKERD_LOG" >&2
    fi
}

if ! daemon_answers; then
    if [[ -n ${DOCKER_HOST:-} && $DOCKER_HOST != unix:///var/run/docker.sock && $DOCKER_HOST != unix:///run/docker.sock ]]; then
        die "DOCKER_HOST=$DOCKER_HOST does not answer; not starting a local dockerd for a remote endpoint"
    fi
    if pgrep -x dockerd >/dev/null 2>&1; then
        # Started by someone else and still coming up: wait for it, never start a second one.
        say "dockerd is running but not answering yet; waiting up to ${DOCKERD_WAIT}s"
        wait_for_daemon || die "the running dockerd did not answer within ${DOCKERD_WAIT}s"
        say "dockerd answers"
    else
        [[ -x $DOCKERD ]] || die "$DOCKERD not found (is docker.io installed?)"
        say "starting dockerd (log: $DOCKERD_LOG)"
        mkdir -p "$(dirname "$DOCKERD_LOG")"
        # Detached from this shell and its session so it outlives the CI step that started it.
        setsid nohup "$DOCKERD" >>"$DOCKERD_LOG" 2>&1 </dev/null &
        if ! wait_for_daemon; then
            log_tail
            die "dockerd did not answer within ${DOCKERD_WAIT}s"
        fi
        say "dockerd answers ($("$DOCKER" version --format '{{.Server.Version}}'))"
    fi
fi
