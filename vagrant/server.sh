#!/usr/bin/env bash
# Provisions a K3s server as in the K3s "Cluster Load Balancer" guide: an HA
# cluster with embedded etcd (server-1 starts it with cluster-init, the others
# join through server-1), each server configured with
#   token: lb-cluster-gd
#   tls-san: 10.10.10.100
# Env (from the Vagrantfile): NODE_IP, K3S_TOKEN, VIP, JOIN (empty on
# server-1, else server-1's address), K3S_VERSION.
set -euo pipefail
# shellcheck source=vagrant/common.sh
. /vagrant/vagrant/common.sh

: "${NODE_IP:?}" "${K3S_TOKEN:?}" "${VIP:?}"
JOIN=${JOIN:-}

settings=("token: ${K3S_TOKEN}" "tls-san: ${VIP}")
if [[ -z $JOIN ]]; then
	settings+=("cluster-init: true")
else
	settings+=("server: https://${JOIN}:6443")
	wait_until 900 "the first server at https://${JOIN}:6443" https_up "https://${JOIN}:6443/cacerts"
fi
write_k3s_config "${settings[@]}"
install_k3s server

wait_until 300 "this node to be Ready" k3s kubectl wait --for=condition=Ready "node/$(hostname)" --timeout=5s
log "K3s server ready: $(k3s --version | head -1)"
