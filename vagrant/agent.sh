#!/usr/bin/env bash
# Provisions a K3s agent that joins through the load balancers' VIP, as the
# guide does:
#   K3S_TOKEN=lb-cluster-gd sh -s - agent --server https://10.10.10.100:6443
# Env (from the Vagrantfile): NODE_IP, K3S_TOKEN, VIP, K3S_VERSION.
set -euo pipefail
# shellcheck source=vagrant/common.sh
. /vagrant/vagrant/common.sh

: "${NODE_IP:?}" "${K3S_TOKEN:?}" "${VIP:?}"

wait_until 600 "the API through the VIP https://${VIP}:6443 (xdplb on lb-1/lb-2)" https_up "https://${VIP}:6443/cacerts"
write_k3s_config "# joins through the VIP (--server https://${VIP}:6443 on the k3s-agent command line)"
install_k3s agent --server "https://${VIP}:6443"
wait_until 300 "k3s-agent to run" systemctl is-active --quiet k3s-agent
log "K3s agent joined through https://${VIP}:6443"
