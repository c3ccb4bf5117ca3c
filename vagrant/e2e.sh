#!/usr/bin/env bash
# End-to-end test of xdplb in the Vagrant cluster; run on the host after
# `vagrant up` (make vagrant-e2e). The client is agent-1 (E2E_CLIENT), using
# server-1's kubeconfig with its server rewritten to https://VIP:6443, so
# every kubectl call is a new connection through xdplb.
#
#   1. kubectl get nodes through the VIP: every node Ready
#   2. health checks switched to HTTPS GET /readyz with a ServiceAccount
#      token and the K3s CA (E2E_HTTPS_CHECK=0 skips this)
#   3. server-2's K3s stopped: lb-1's `xdplb status` shows it DOWN and
#      kubectl through the VIP keeps working; started again: UP
#   4. lb-1's xdplb stopped: keepalived moves the VIP to lb-2 and kubectl
#      keeps working; started again: the VIP is back on lb-1
#
# Whatever it stops, it starts again, also when a step fails.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"

VIP=10.10.10.100
SERVER2=10.10.10.51
BACKENDS=(10.10.10.50 10.10.10.51 10.10.10.52)
CLIENT=${E2E_CLIENT:-agent-1}
HTTPS_CHECK=${E2E_HTTPS_CHECK:-1}
KCFG=/root/xdplb-e2e.kubeconfig

passed=0
stopped_k3s=0
stopped_xdplb=0

step() { printf '\n=== %s\n' "$*"; }
ok() {
	echo "--- ok: $*"
	passed=$((passed + 1))
}
fail() {
	echo "--- FAIL: $*" >&2
	echo "vagrant-e2e: ${passed} passed, 1 failed"
	exit 1
}

# vssh NODE CMD: run CMD on NODE (as the vagrant user; use sudo), no stdin.
vssh() { vagrant ssh "$1" --no-tty -c "$2" -- -q </dev/null; }
# vssh_in NODE CMD: the same, with our stdin.
vssh_in() { vagrant ssh "$1" --no-tty -c "$2" -- -q; }

# retry SECONDS WHAT CMD...: poll CMD every 3s until it succeeds.
retry() {
	local timeout=$1 what=$2
	shift 2
	local deadline=$((SECONDS + timeout)) said=0
	until "$@"; do
		((SECONDS < deadline)) || return 1
		((said)) || echo "... waiting up to ${timeout}s for ${what}"
		said=1
		sleep 3
	done
}

kubectl_vip() { vssh "$CLIENT" "sudo k3s kubectl --kubeconfig $KCFG --request-timeout=10s $*"; }

all_nodes_ready() {
	local out
	out=$(kubectl_vip get nodes --no-headers 2>/dev/null) || return 1
	echo "$out" | awk 'NF { n++; if ($2 != "Ready") bad = 1 } END { exit (bad || n < 4) }'
}

# kubectl_n_times N: N kubectl calls in a row through the VIP all succeed.
kubectl_n_times() {
	local i
	for ((i = 0; i < $1; i++)); do
		kubectl_vip get --raw=/readyz >/dev/null || return 1
	done
}

status_lb() { vssh "$1" "sudo /usr/bin/xdplb status"; }

# backend_is LB ADDR STATE: LB's `xdplb status` has ADDR on a line with the
# word STATE (UP or DOWN) and, for UP, not DOWN.
backend_is() {
	local line
	line=$(status_lb "$1" 2>/dev/null | grep -F "$2" | head -1) || return 1
	if [[ $3 == UP ]]; then
		grep -qiw up <<<"$line" && ! grep -qiw down <<<"$line"
	else
		grep -qiw down <<<"$line"
	fi
}

has_vip() { vssh "$1" "ip -4 -o addr show dev eth1" | grep -qw "$VIP"; }
lacks_vip() { ! has_vip "$1"; }

restore() {
	if ((stopped_k3s)); then
		echo "(restoring: starting k3s on server-2)"
		vssh server-2 "sudo systemctl start k3s" || true
	fi
	if ((stopped_xdplb)); then
		echo "(restoring: starting xdplb on lb-1)"
		vssh lb-1 "sudo systemctl start xdplb" || true
	fi
}
trap restore EXIT

step "preflight: every VM running"
states=$(vagrant status --machine-readable | awk -F, '$3 == "state" { print $2 "=" $4 }')
echo "$states"
for m in server-1 server-2 server-3 lb-1 lb-2 "$CLIENT"; do
	grep -qx "$m=running" <<<"$states" || fail "$m is not running: vagrant up first"
done

step "1. kubectl get nodes through the VIP ($VIP) from $CLIENT"
vssh server-1 "sudo cat /etc/rancher/k3s/k3s.yaml" |
	sed "s#https://127.0.0.1:6443#https://${VIP}:6443#" |
	vssh_in "$CLIENT" "sudo sh -c 'umask 077; cat > $KCFG'"
vssh "$CLIENT" "sudo grep -q 'server: https://${VIP}:6443' $KCFG" || fail "kubeconfig on $CLIENT does not point at the VIP"
has_vip lb-1 || fail "lb-1 does not hold the VIP"
retry 300 "all nodes Ready" all_nodes_ready || fail "not every node is Ready through the VIP"
kubectl_vip get nodes -o wide
ok "kubectl through the VIP sees every node Ready"

if [[ $HTTPS_CHECK == 1 ]]; then
	step "2. health checks: HTTPS GET /readyz with a ServiceAccount token"
	vssh server-1 "sudo k3s kubectl -n kube-system create serviceaccount xdplb-check --dry-run=client -o yaml | sudo k3s kubectl apply -f -" >/dev/null
	token=$(vssh server-1 "sudo k3s kubectl -n kube-system create token xdplb-check --duration=8760h" | tr -d '\r\n')
	[[ -n $token ]] || fail "could not create a token for /readyz"
	# lb-2 first: while lb-1 restarts, the VIP may move for a moment.
	for lb in lb-2 lb-1; do
		printf '%s' "$token" | vssh_in "$lb" "sudo sh -c 'umask 077; cat > /etc/xdplb/check-token'"
		vssh "$lb" "sudo /usr/local/sbin/xdplb-vagrant-config https && sudo systemctl restart xdplb"
		for b in "${BACKENDS[@]}"; do
			retry 120 "$b UP on $lb" backend_is "$lb" "$b" UP || {
				status_lb "$lb" || true
				fail "$lb does not see $b UP with the https check"
			}
		done
	done
	retry 60 "the VIP back on lb-1" has_vip lb-1 || fail "the VIP did not come back to lb-1"
	status_lb lb-1
	kubectl_n_times 3 || fail "kubectl through the VIP failed after the check change"
	ok "every backend UP with check https /readyz (bearer token, K3s CA)"
else
	step "2. skipped (E2E_HTTPS_CHECK=0)"
fi

step "3. server-2 stopped: lb-1 marks it DOWN, kubectl still works"
stopped_k3s=1
vssh server-2 "sudo systemctl stop k3s"
retry 120 "server-2 DOWN on lb-1" backend_is lb-1 "$SERVER2" DOWN || {
	status_lb lb-1 || true
	fail "lb-1 does not mark $SERVER2 DOWN"
}
status_lb lb-1
kubectl_n_times 10 || fail "kubectl through the VIP failed with server-2 down"
ok "server-2 DOWN on lb-1; 10 kubectl calls through the VIP went to the others"
vssh server-2 "sudo systemctl start k3s"
stopped_k3s=0
retry 300 "server-2 UP on lb-1" backend_is lb-1 "$SERVER2" UP || {
	status_lb lb-1 || true
	fail "lb-1 does not mark $SERVER2 UP again"
}
ok "server-2 back UP on lb-1"

step "4. lb-1's xdplb stopped: the VIP moves to lb-2, kubectl still works"
stopped_xdplb=1
vssh lb-1 "sudo systemctl stop xdplb"
retry 30 "the VIP on lb-2" has_vip lb-2 || fail "lb-2 did not take the VIP"
retry 30 "the VIP gone from lb-1" lacks_vip lb-1 || fail "lb-1 still holds the VIP"
vssh lb-2 "ip -4 addr show dev eth1"
retry 30 "kubectl through lb-2" kubectl_n_times 5 || fail "kubectl through the VIP failed on lb-2"
ok "VIP on lb-2; kubectl through the VIP works"
vssh lb-1 "sudo systemctl start xdplb"
stopped_xdplb=0
retry 60 "the VIP back on lb-1" has_vip lb-1 || fail "the VIP did not come back to lb-1"
kubectl_n_times 3 || fail "kubectl through the VIP failed after lb-1 came back"
ok "xdplb back on lb-1, the VIP with it"

echo
echo "vagrant-e2e: ${passed} passed, 0 failed"
