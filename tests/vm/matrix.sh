#!/usr/bin/env bash
# Runs test commands on every kernel of the matrix (default: the host's own
# kernel, then Debian 11's 5.10 and Debian 12's 6.1 under qemu) and prints a
# per-kernel report with the lines the tests print containing "REPORT:".
# Exits non-zero if any test failed on any kernel.
#
#   tests/vm/matrix.sh [-kernels host,bullseye,bookworm] [-q] -- TEST...
#   tests/vm/matrix.sh -- 'bin/vm/smoke.test -test.v' 'cd loader && ../bin/vm/loader.test -test.v'
#
# Each TEST is a shell command run as root from the current directory.
# The guest has its own /run and a writable overlay on everything else.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
(cd "$repo" && go build -o bin/vmrun ./tests/vm/vmrun)
exec "$repo/bin/vmrun" matrix "$@"
