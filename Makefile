# xdplb — make help lists the targets.
SHELL   := /bin/bash
GO      ?= $(shell command -v go 2>/dev/null || echo /usr/local/go/bin/go)
CLANG   ?= clang-14
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -X github.com/xdplb/xdplb/control/daemon.Version=$(VERSION)
export PATH := $(dir $(GO)):$(PATH)
# Every binary is static (no cgo, so it runs on any glibc: Ubuntu 20.04's
# 2.31 too) and carries no path of the machine that built it. GOARCH and
# GOOS from the environment cross-compile.
export CGO_ENABLED := 0
GOBUILD := $(GO) build -trimpath
BIN     ?= bin

# Debian/Ubuntu packages, installed when missing: what the tests use, and
# the part of it the demo needs (it builds its own binaries with Go).
# systemd and man-db: systemd-analyze verify/security of the unit (it looks
# up the man page its Documentation= names); strace: the daemon's system
# calls against the unit's SystemCallFilter (e2e); groff-base renders the
# man page in its test; bash-completion runs the packaged completion.
TEST_DEBS := clang-14 llvm-14 libbpf-dev linux-libc-dev iproute2 ethtool keepalived bpftool systemd man-db groff-base strace bash-completion
DEMO_DEBS := iproute2 ethtool

# install-debs installs the packages of $(1) that are missing (as root).
define install-debs
	@missing=""; for p in $(1); do [ "$$(dpkg-query -W -f='$${db:Status-Status}' $$p 2>/dev/null)" = installed ] || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
		if [ "$$(id -u)" != 0 ]; then echo "missing packages:$$missing (run as root)"; exit 1; fi; \
		echo "installing$$missing"; apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; fi
endef

.PHONY: help
help: ## list the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-z-]+:.*## / {printf "  %-16s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

.PHONY: generate
generate: ## rebuild the BPF objects and Go bindings with the pinned clang (clang-14)
	cd bpf && $(GO) generate ./...

.PHONY: check-generate
check-generate: deps ## prove the committed BPF objects match the C source
	cd bpf && $(GO) generate ./...
	git diff --exit-code -- bpf/ || { echo "committed bpf2go output differs from the C: run make generate and commit"; exit 1; }

.PHONY: build
build: ## build bin/xdplb and the test tools (bin/mockapi, bin/agent): static binaries
	$(GOBUILD) -ldflags "$(LDFLAGS)" -o $(BIN)/xdplb ./cmd/xdplb
	$(GOBUILD) -o $(BIN)/mockapi ./tests/cmd/mockapi
	$(GOBUILD) -o $(BIN)/agent ./tests/cmd/agent

DEB_DIR ?= $(CURDIR)

.PHONY: deb
deb: ## build xdplb_<version>_amd64.deb (dpkg-deb): static binary, unit, conffile, keepalived sample, docs, man page, completion
	GO=$(GO) packaging/deb.sh -v $(VERSION) -o $(DEB_DIR)

.PHONY: docs
docs: ## the man page and shell completions, from the command tree: bin/xdplb.8, bin/completion/{xdplb.bash,_xdplb,xdplb.fish}
	mkdir -p bin/completion
	$(GO) run -ldflags "$(LDFLAGS)" ./cmd/xdplb man > bin/xdplb.8
	$(GO) run -ldflags "$(LDFLAGS)" ./cmd/xdplb completion bash > bin/completion/xdplb.bash
	$(GO) run -ldflags "$(LDFLAGS)" ./cmd/xdplb completion zsh > bin/completion/_xdplb
	$(GO) run -ldflags "$(LDFLAGS)" ./cmd/xdplb completion fish > bin/completion/xdplb.fish

.PHONY: deps
deps: ## install what the tests need when missing (Debian/Ubuntu, root): clang-14, llvm-14, libbpf-dev, linux-libc-dev, iproute2, ethtool, keepalived, bpftool
	$(call install-debs,$(TEST_DEBS))

.PHONY: demo-deps
demo-deps: ## install what the demo needs when missing (Debian/Ubuntu, root): iproute2, ethtool
	$(call install-debs,$(DEMO_DEBS))

.PHONY: root
root:
	@if [ "$$(id -u)" != 0 ]; then echo "make test needs root (BPF, network namespaces): run sudo make test"; exit 1; fi

.PHONY: lint
lint: ## gofmt, go vet
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...

.PHONY: test
test: root deps lint check-generate ## unit, packet, loader and end-to-end tests, then the kernel matrix (as root)
	$(GO) test -count=1 -timeout 10m ./bpf/... ./loader/... ./control/... ./cmd/... ./tests/layers/ ./tests/cmd/... ./tests/lab/... ./tests/testnet/... ./tests/apiserver/... ./tests/agent/... ./bench/... ./packaging/... ./tests/vm/vmrun/...
	$(GO) test -count=1 -timeout 40m -v ./tests/e2e/ 2>&1 | tee /tmp/xdplb-e2e.log | grep -E '^(=== RUN|--- |PASS|FAIL|ok|REPORT)|e2e_|\.go:[0-9]+:' ; test $${PIPESTATUS[0]} -eq 0
	$(MAKE) vagrant-check
	$(MAKE) vm-test

.PHONY: test-unit
test-unit: ## tests that need no root
	$(GO) test -count=1 ./control/... ./cmd/... ./tests/cmd/... ./tests/lab/... ./packaging/...

.PHONY: fuzz
fuzz: root ## fuzz the data path for 60 s
	cd bpf && $(GO) test -run XXX -fuzz FuzzXDP -fuzztime 60s .

.PHONY: bench
bench: root deps ## benchmarks: ns/packet and the load balancers side by side (~14 min; BENCHMARKS.md, bench/results/: JSON, chart.svg)
	bash bench/deps.sh
	$(GO) run ./bench/cmd/lbbench

.PHONY: bench-quick
bench-quick: root deps ## a ~3 minute smoke run of the benchmarks (bench/results/quick/)
	bash bench/deps.sh
	$(GO) run ./bench/cmd/lbbench --quick

.PHONY: bench-render
bench-render: ## redo summary.json, chart.svg and the Markdown from the saved results.json files (no root)
	$(GO) run ./bench/cmd/lbbench --render bench/results/results.json
	$(GO) run ./bench/cmd/lbbench --quick --render bench/results/quick/results.json

.PHONY: bench-test
bench-test: ## tests of the benchmark's report: goal arithmetic, Markdown, chart, phases (no root)
	$(GO) test -count=1 ./bench/...

.PHONY: demo
demo: root demo-deps ## a live demo in network namespaces: three mock API servers behind xdplb (installs iproute2, ethtool)
	$(GO) run ./tests/demo

# The host kernel runs the whole suite in `make test` itself. The guests boot
# Debian bullseye's userland (glibc 2.31, Ubuntu 20.04's generation), install
# the .deb with dpkg -i first and run the installed binary, its configuration and
# keepalived with its sample (one node: a two-node failover's timing under TCG
# is too noisy to assert; the host's e2e suite asserts it).
# The packet tests run without Go's preemption signals: before 5.10 a signal
# during BPF_PROG_TEST_RUN makes the kernel return EINTR after running the
# program, without its verdict and output, and cilium/ebpf counts that as a
# run (verdict 0, XDP_ABORTED): 1 run in 4 failed so on 5.4.
VM_KERNELS ?= 5.4,bullseye,bookworm
VM_E2E ?= TestBalance$$|TestServerProcessDies|TestRestartKeepsStreams|TestPlatformFaults
VM_E2E_ENV = XDPLB_E2E_SLACK=6s XDPLB_E2E_INTER=1s XDPLB_E2E_CHECK=tcp \
	XDPLB_E2E_BIN=$(CURDIR)/bin/vm/$${XDPLB_VM:+installed} \
	XDPLB_E2E_KEEPALIVED_CONF=$${XDPLB_VM:+/usr/share/doc/xdplb/examples/keepalived.conf}
VM_TESTS ?= 'XDPLB_VM_DEBS=$(CURDIR)/bin/vm bin/vm/install.test -test.v -test.count=1 -test.run "TestVagrantLBFailsFast|TestInstall"' \
	'cd bpf && GODEBUG=asyncpreemptoff=1 ../bin/vm/bpf.test -test.count=1 -test.short' \
	'cd loader && ../bin/vm/loader.test -test.count=1' \
	'bin/vm/smoke.test -test.v -test.count=1' \
	'cd tests/e2e && $(VM_E2E_ENV) ../../bin/vm/e2e.test -test.count=1 -test.v -test.run "$(VM_E2E)"' \
	'bin/vm/install.test -test.v -test.count=1 -test.run "TestKeepalivedTracksXdplb|TestRemove"'

.PHONY: vm-deps
vm-deps: ## install qemu, busybox-static, kmod, xz-utils, zstd for the kernel matrix (root, Debian 12)
	tests/vm/deps.sh

.PHONY: vm-test
vm-test: root vm-deps ## the kernel matrix: the .deb, packet, loader and e2e tests on Linux 5.4, 5.10 and 6.1 in qemu, on Debian 11's userland
	rm -rf bin/vm && mkdir -p bin/vm/installed
	$(GO) test -c -trimpath -o bin/vm/ ./bpf ./loader ./tests/vm/smoke ./tests/vm/install ./tests/e2e
	$(GOBUILD) -ldflags "$(LDFLAGS)-upgraded" -o bin/vm/xdplb-upgraded ./cmd/xdplb
	$(GOBUILD) -o bin/vm/mockapi ./tests/cmd/mockapi
	$(GOBUILD) -o bin/vm/nosyscall ./tests/cmd/nosyscall
	$(GOBUILD) -ldflags "$(LDFLAGS)" -o bin/vm/xdplb ./cmd/xdplb
	GO=$(GO) packaging/deb.sh -v $(VERSION) -o bin/vm
	GO=$(GO) GOARCH=arm64 packaging/deb.sh -v $(VERSION) -o bin/vm
	ln -s /usr/bin/xdplb bin/vm/installed/xdplb
	ln -s ../xdplb-upgraded ../mockapi ../nosyscall bin/vm/installed/
	tests/vm/matrix.sh -kernels $(VM_KERNELS) -timeout 20m -test-timeout 8m -- $(VM_TESTS)

.PHONY: vm-smoke
vm-smoke: root vm-deps ## boot each kernel once with a trivial command (uname, bpffs, veth)
	for k in 5.4 bullseye bookworm; do tests/vm/run-kernel.sh -timeout 3m $$k -- 'uname -r; stat -f -c %T /sys/fs/bpf; ip link add v0 type veth peer name v1 && ip link show v0' || exit 1; done

.PHONY: vagrant-check
vagrant-check: ## shellcheck vagrant/ and tests/vm/ scripts, ruby -c and vagrant validate (offline)
	vagrant/check.sh

.PHONY: vagrant-e2e
vagrant-e2e: ## end-to-end test on the Vagrant cluster of the guide (make build && vagrant up first)
	vagrant/e2e.sh

.PHONY: clean
clean: ## remove build output
	rm -rf bin xdplb_*.deb
