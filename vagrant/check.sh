#!/usr/bin/env bash
# CI check of the Vagrant cluster definition, offline (no box, no VM): lints
# the provisioning and test scripts with shellcheck, checks the Vagrantfile's
# Ruby syntax and runs `vagrant validate --ignore-provider` on it. Installs
# the shellcheck and vagrant packages (Debian 12 has vagrant 2.3.4) when missing.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"

missing=()
command -v shellcheck >/dev/null || missing+=(shellcheck)
command -v vagrant >/dev/null || missing+=(vagrant)
command -v ruby >/dev/null || missing+=(ruby)
if ((${#missing[@]} > 0)); then
	if [[ $(id -u) -ne 0 ]]; then
		echo "vagrant/check.sh: need root to install: ${missing[*]}" >&2
		exit 1
	fi
	echo "vagrant/check.sh: installing ${missing[*]}"
	apt-get update -q
	DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

echo "shellcheck: vagrant/*.sh tests/vm/*.sh packaging/*.sh packaging/deb/{postinst,prerm,postrm}"
shellcheck -x vagrant/*.sh tests/vm/*.sh packaging/*.sh packaging/deb/postinst packaging/deb/prerm packaging/deb/postrm

echo "ruby -c Vagrantfile"
ruby -c Vagrantfile >/dev/null

# Keep vagrant's state out of the work tree and away from the network.
dot=$(mktemp -d)
trap 'rm -rf "$dot"' EXIT
export VAGRANT_DOTFILE_PATH=$dot VAGRANT_CHECKPOINT_DISABLE=1 VAGRANT_NO_PLUGINS=1
for agents in 1 3; do
	for check in tls https; do
		echo "vagrant validate --ignore-provider (XDPLB_AGENTS=$agents XDPLB_CHECK=$check)"
		XDPLB_AGENTS=$agents XDPLB_CHECK=$check vagrant validate --ignore-provider
	done
done
echo "vagrant/check.sh: ok"
