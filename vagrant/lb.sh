#!/usr/bin/env bash
# Provisions lb-1/lb-2: xdplb in place of the guide's HAProxy, and the
# guide's keepalived moving the VIP, with `xdplb check` as its track script.
# Installs bin/xdplb and packaging/xdplb.service from the synced /vagrant
# (build on the host first: GOOS=linux GOARCH=amd64 make build).
# Env (from the Vagrantfile): NODE_IP, VIP, LB_STATE (MASTER|BACKUP),
# LB_PRIORITY (200|100), BACKENDS (space-separated), XDPLB_CHECK.
set -euo pipefail
# shellcheck source=vagrant/common.sh
. /vagrant/vagrant/common.sh

: "${NODE_IP:?}" "${VIP:?}" "${LB_STATE:?}" "${LB_PRIORITY:?}" "${BACKENDS:?}"
XDPLB_CHECK=${XDPLB_CHECK:-tls}

bin=/vagrant/bin/xdplb
unit=/vagrant/packaging/xdplb.service
rebuild="build it on the host (GOOS=linux GOARCH=amd64 make build), then: vagrant rsync lb-1 lb-2 && vagrant provision lb-1 lb-2"
[[ -f $bin ]] || die "$bin is missing: $rebuild"
[[ $(head -c 4 "$bin" | od -An -tx1 | tr -d ' \n') == 7f454c46 ]] || die "$bin is not a Linux binary: $rebuild"
[[ -f $unit ]] || die "$unit is missing (it comes with the checkout)"

apt_install keepalived curl
install -m 0755 "$bin" /usr/local/bin/xdplb
install -m 0644 "$unit" /etc/systemd/system/xdplb.service
install -m 0755 /vagrant/vagrant/xdplb-config.sh /usr/local/sbin/xdplb-vagrant-config
install -d -m 0755 /etc/xdplb

# K3s gives its CA to anyone at /cacerts; with it the checks verify the servers.
first=${BACKENDS%% *}
if curl -ksf --max-time 10 -o /etc/xdplb/k3s-ca.crt.new "https://${first}:6443/cacerts"; then
	mv /etc/xdplb/k3s-ca.crt.new /etc/xdplb/k3s-ca.crt
else
	rm -f /etc/xdplb/k3s-ca.crt.new
	log "could not fetch the K3s CA from ${first}: the checks will not verify the servers' certificates"
fi

cat >/etc/xdplb/vagrant.env <<ENV
# read by xdplb-vagrant-config; written by vagrant/lb.sh
VIP=${VIP}
BACKENDS="${BACKENDS}"
CHECK=${XDPLB_CHECK}
ENV
/usr/local/sbin/xdplb-vagrant-config

systemctl daemon-reload
systemctl enable xdplb
systemctl restart xdplb
wait_until 180 "xdplb check (daemon up, program attached, a backend up)" /usr/local/bin/xdplb check

# The guide's keepalived.conf, tracking xdplb instead of haproxy.
cat >/etc/keepalived/keepalived.conf <<CONF
# written by vagrant/lb.sh
global_defs {
  enable_script_security
  script_user root
}

vrrp_script chk_xdplb {
  script "/usr/local/bin/xdplb check"
  interval 1
  fall 2
  rise 2
}

vrrp_instance xdplb-vip {
  interface eth1
  state ${LB_STATE}
  priority ${LB_PRIORITY}
  virtual_router_id 51
  advert_int 1

  virtual_ipaddress {
    ${VIP}/24
  }

  track_script {
    chk_xdplb
  }
}
CONF
systemctl enable keepalived
systemctl restart keepalived

has_vip() { ip -4 -o addr show dev eth1 | grep -qw "${VIP}"; }
if [[ $LB_STATE == MASTER ]]; then
	wait_until 60 "keepalived to put ${VIP} on eth1" has_vip
fi
/usr/local/bin/xdplb status || true
log "xdplb and keepalived (${LB_STATE}, priority ${LB_PRIORITY}) running"
