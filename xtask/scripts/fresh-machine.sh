#!/usr/bin/env bash
# Runs `cargo xtask test [ARGS]` as a fresh machine would see it, without redis-server, and
# without touching this machine: the command runs in a chroot on a throw-away overlay of `/`
# (in new mount and PID namespaces), where the redis packages are removed first. So the real
# install path of `cargo xtask test` runs (apt-get update + apt-get install into the overlay),
# while redis-server stays installed, and running, for everyone else.
#
#   sudo xtask/scripts/fresh-machine.sh -p degrade-ratelimit     # only the crate that needs it
#   sudo xtask/scripts/fresh-machine.sh                          # the whole suite
#
# Needs root (for unshare, mount and chroot), Linux with overlayfs, apt and network access. The
# workspace is bind-mounted at its own path, so the build reuses and fills its target dir.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"

if [ "${FRESH_MACHINE_INSIDE:-}" != 1 ]; then
    # A private mount namespace (nothing mounted here is seen outside) and a PID namespace (a
    # package script that stops a service cannot reach this machine's processes).
    exec env FRESH_MACHINE_INSIDE=1 unshare --mount --propagation private --pid --fork \
        "${BASH_SOURCE[0]}" "$@"
fi

scratch="$(mktemp -d /tmp/fresh-machine.XXXXXX)"
mount -t tmpfs tmpfs "$scratch"
mkdir "$scratch/upper" "$scratch/work" "$scratch/root"
mount -t overlay overlay \
    -o "lowerdir=/,upperdir=$scratch/upper,workdir=$scratch/work" "$scratch/root"
new="$scratch/root"
mount -t proc proc "$new/proc"
for dir in /sys /dev; do mount --rbind "$dir" "$new$dir"; done
mount --bind "$repo" "$new$repo"
# Like a container image: package scripts may not start or stop services.
printf '#!/bin/sh\nexit 101\n' >"$new/usr/sbin/policy-rc.d"
chmod +x "$new/usr/sbin/policy-rc.d"

quoted=""
for arg in "$@"; do quoted+=" $(printf '%q' "$arg")"; done
chroot "$new" /usr/bin/env -i HOME="$HOME" PATH="$PATH" TERM="${TERM:-dumb}" bash -c "
    set -euo pipefail
    echo '==> fresh machine: removing redis-server from the overlay'
    DEBIAN_FRONTEND=noninteractive apt-get remove -y -qq redis-server redis-tools >/dev/null
    if command -v redis-server >/dev/null; then
        echo 'redis-server is still on PATH' >&2
        exit 1
    fi
    echo '==> fresh machine: redis-server is not on PATH; running cargo xtask test$quoted'
    cd '$repo'
    cargo xtask test$quoted
"
