#!/usr/bin/env bash
# Writes /etc/xdplb/xdplb.yaml on an LB node of the Vagrant cluster from
# /etc/xdplb/vagrant.env (VIP, BACKENDS, CHECK). vagrant/lb.sh installs it
# as /usr/local/sbin/xdplb-vagrant-config; vagrant/e2e.sh runs it again to
# switch the health check to https.
#
#   xdplb-vagrant-config [tcp|tls|https]    (default: CHECK from vagrant.env)
#
# tls and https verify the servers with /etc/xdplb/k3s-ca.crt when present;
# https GETs /readyz with the bearer token in /etc/xdplb/check-token, since
# K3s answers anonymous requests with 401. XDPLB_ETC (default /etc/xdplb)
# moves all these files, for tests.
set -euo pipefail

etc=${XDPLB_ETC:-/etc/xdplb} # another dir only for tests
envfile=$etc/vagrant.env
ca=$etc/k3s-ca.crt
token=$etc/check-token
out=$etc/xdplb.yaml

[[ -r $envfile ]] || {
	echo "xdplb-vagrant-config: no $envfile (written by vagrant/lb.sh)" >&2
	exit 1
}
VIP='' BACKENDS='' CHECK=''
# shellcheck source=/dev/null
. "$envfile"
check=${1:-${CHECK:-tls}}
case $check in
tcp | tls | https) ;;
*)
	echo "xdplb-vagrant-config: check must be tcp, tls or https, not $check" >&2
	exit 2
	;;
esac
if [[ $check == https && ! -s $token ]]; then
	echo "xdplb-vagrant-config: no $token (K3s answers /readyz only to authenticated clients): using tls" >&2
	check=tls
fi

tmp=$(mktemp "$out.XXXXXX")
{
	echo "# $out on $(hostname), written by xdplb-vagrant-config (vagrant/xdplb-config.sh)"
	echo "iface: eth1"
	echo "vip: ${VIP:?}"
	echo "port: 6443"
	echo "backends:"
	for b in ${BACKENDS:?}; do
		echo "  - $b"
	done
	echo "check: $check"
	if [[ $check != tcp && -s $ca ]]; then
		echo "check-ca: $ca"
	fi
	if [[ $check == https ]]; then
		echo "check-path: /readyz"
		echo "check-token-file: $token"
	fi
	echo "# the guide's HAProxy timing: default-server inter 10s downinter 5s"
	echo "inter: 10s"
	echo "downinter: 5s"
	echo "xdp-mode: auto"
} >"$tmp"
chmod 0644 "$tmp"
mv "$tmp" "$out"
echo "xdplb-vagrant-config: wrote $out (check: $check)"
