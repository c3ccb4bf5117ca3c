#!/usr/bin/env bash
# Boots a Debian kernel under qemu on the host's root file system (read-only
# over 9p, tmpfs overlay) and runs a command in it as root; exits with the
# command's exit code (124 on timeout, 125 if the VM failed).
#
#   tests/vm/run-kernel.sh [-timeout 10m] [-v] KERNEL -- COMMAND...
#   tests/vm/run-kernel.sh bullseye -- 'uname -r; ls /sys/fs/bpf'
#
# KERNEL: bullseye|5.10, bookworm|6.1, trixie|6.12, a release, a package
# name or a linux-image .deb. All flags: bin/vmrun help.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
(cd "$repo" && go build -o bin/vmrun ./tests/vm/vmrun)
exec "$repo/bin/vmrun" run "$@"
