#!/usr/bin/env bash
# Helpers for the provisioning scripts in vagrant/ (sourced, not run).

log() { echo "[$(hostname)] $*"; }
die() {
	echo "[$(hostname)] ERROR: $*" >&2
	exit 1
}

# apt_install PKG... installs the packages that are missing.
apt_install() {
	local missing=() p
	for p in "$@"; do
		dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null | grep -qx installed || missing+=("$p")
	done
	((${#missing[@]} == 0)) && return 0
	log "installing ${missing[*]}"
	apt-get update -q
	DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}"
}

# wait_until SECONDS WHAT CMD... runs CMD every 5s until it succeeds, or
# fails after SECONDS.
wait_until() {
	local timeout=$1 what=$2
	shift 2
	local deadline=$((SECONDS + timeout))
	until "$@"; do
		if ((SECONDS >= deadline)); then
			die "gave up after ${timeout}s waiting for ${what}"
		fi
		log "waiting for ${what}"
		sleep 5
	done
}

# https_up URL: does URL answer (any certificate, 2xx)?
https_up() { curl -ksf --max-time 5 -o /dev/null "$1"; }

# install_k3s ARGS... runs K3s's installer (K3S_VERSION pins a release,
# empty means the stable channel); the node's settings are in
# /etc/rancher/k3s/config.yaml.
install_k3s() {
	apt_install curl
	curl -sfL https://get.k3s.io | INSTALL_K3S_VERSION="${K3S_VERSION:-}" K3S_TOKEN="${K3S_TOKEN:?}" sh -s - "$@"
}

# write_k3s_config LINES...: /etc/rancher/k3s/config.yaml, with the settings
# every node needs in Vagrant: the cluster address is on eth1 (eth0 is
# Vagrant's NAT, the same address on every VM under VirtualBox).
write_k3s_config() {
	mkdir -p /etc/rancher/k3s
	{
		echo "# written by vagrant/$(basename "$0")"
		echo "node-ip: ${NODE_IP:?}"
		echo "flannel-iface: eth1"
		printf '%s\n' "$@"
	} >/etc/rancher/k3s/config.yaml
}
