#!/usr/bin/env bash
# Provisions lb-1/lb-2: xdplb in place of the guide's HAProxy, and the
# guide's keepalived moving the VIP, with `xdplb check` as its track script.
# Installs the package from the synced /vagrant as an operator would
# (apt install ./xdplb_*.deb; build it on the host first: make deb), and
# runs `xdplb version` before anything else, so a package that cannot run
# here fails at once with the real error.
# Env (from the Vagrantfile): NODE_IP, VIP, LB_STATE (MASTER|BACKUP),
# LB_PRIORITY (200|100), BACKENDS (space-separated), XDPLB_CHECK.
set -euo pipefail
# shellcheck source=vagrant/common.sh
. /vagrant/vagrant/common.sh

: "${NODE_IP:?}" "${VIP:?}" "${LB_STATE:?}" "${LB_PRIORITY:?}" "${BACKENDS:?}"
XDPLB_CHECK=${XDPLB_CHECK:-tls}

arch=$(dpkg --print-architecture)
rebuild="build it on the host (make deb GOARCH=$arch: a static binary, no cgo, so any Linux host with Go and dpkg-deb builds it), then: vagrant rsync lb-1 lb-2 && vagrant provision lb-1 lb-2"
shopt -s nullglob
debs=(/vagrant/xdplb_*_"$arch".deb)
others=(/vagrant/xdplb_*.deb)
shopt -u nullglob
if ((${#debs[@]} != 1)); then
	die "want one /vagrant/xdplb_*_$arch.deb for this $arch node, found ${#debs[@]} (all packages there: ${others[*]:-none}): $rebuild"
fi
deb=${debs[0]}

# The package: dpkg -i needs nothing else (the binary is static); apt
# would add keepalived (Recommends), installed below anyway.
DEBIAN_FRONTEND=noninteractive dpkg -i --force-confold "$deb" || die "dpkg -i $deb failed (see above): $rebuild"
if ! version=$(/usr/bin/xdplb version 2>&1); then
	die "the installed xdplb does not run on this node ($(uname -m), $(ldd --version 2>&1 | head -1)): ${version}: $rebuild"
fi
log "installed $(basename "$deb"): $version"

apt_install keepalived curl
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
wait_until 180 "xdplb check (daemon up, program attached, a backend up)" /usr/bin/xdplb check

# keepalived.conf as the package ships it (track scripts `xdplb check` and
# `xdplb check --backends` instead of a haproxy process check), with this
# node's state, the VIP, and the guide's priorities 200/100 (the sample has
# a tie, 100 on both; vagrant/e2e.sh checks that the VIP returns to lb-1).
sample=/usr/share/doc/xdplb/examples/keepalived.conf
sed -e "s/^\([[:space:]]*\)state [A-Z][A-Z]*.*/\1state ${LB_STATE}/" \
	-e "s/^\([[:space:]]*\)priority [0-9][0-9]*.*/\1priority ${LB_PRIORITY}/" \
	-e "s|10\.10\.10\.100/24|${VIP}/24|" "$sample" >/etc/keepalived/keepalived.conf.new
for want in "state ${LB_STATE}" "priority ${LB_PRIORITY}" "${VIP}/24" 'script "/usr/bin/xdplb check'; do
	grep -qF "$want" /etc/keepalived/keepalived.conf.new || die "$sample changed: could not set '$want' in it"
done
mv /etc/keepalived/keepalived.conf.new /etc/keepalived/keepalived.conf
systemctl enable keepalived
systemctl restart keepalived

has_vip() { ip -4 -o addr show dev eth1 | grep -qw "${VIP}"; }
if [[ $LB_STATE == MASTER ]]; then
	wait_until 60 "keepalived to put ${VIP} on eth1" has_vip
fi
/usr/bin/xdplb status || true
log "xdplb and keepalived (${LB_STATE}, priority ${LB_PRIORITY}) running"
