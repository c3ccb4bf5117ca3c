package main

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"sort"
	"strings"
)

// markers are the console lines that carry results. Each boot has its own
// nonce in them, so output that happens to contain a marker (a test printing
// an old log, say) is not mistaken for one. The guest prints them on lines of
// their own; the host finds them anywhere in a line since kernel messages may
// share it. The guest scripts spell them with $XDPLB_VM_NONCE.
type markers struct {
	nonce, ready, exit, begin, end, userland string
}

func newMarkers() markers {
	b := make([]byte, 6)
	rand.Read(b)
	n := hex.EncodeToString(b)
	return markers{nonce: n, ready: "XDPLB-VM-READY-" + n, exit: "XDPLB-VM-EXIT-" + n + "=",
		begin: "XDPLB-VM-BEGIN-" + n + " ", end: "XDPLB-VM-END-" + n + " ", userland: "XDPLB-VM-USERLAND-" + n + " "}
}

// 9p mount tags of the guest's shares (see qemuArgs).
const (
	tagHostRoot = "hostroot" // the host's /, in host-userland mode
	tagUserland = "userland" // a Userland's root, otherwise
	tagWork     = "work"     // the current directory, with a userland
	tagModules  = "modules"  // the kernel's modules, with a userland
)

// initScript is PID 1 in the initramfs (busybox sh): load the modules for
// 9p, mount the root file system (a userland from the cache, or the host's
// root) read-only with a tmpfs overlay, and with a userland the current
// directory (overlaid too) and the kernel's modules; mount the pseudo file
// systems in it, and switch to it to run stage2.sh.
const initScript = `#!/bin/sh
# PID 1 of an xdplb test VM; written by tests/vm/vmrun.
export PATH=/bin
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
. /xdplb-vm/config
say() { echo "xdplb-vm: $*"; }
die() {
	say "FATAL: $*"
	echo "XDPLB-VM-EXIT-${XDPLB_VM_NONCE}=125"
	echo o >/proc/sysrq-trigger
	sleep 60
}
say "init on $(uname -r) at $(cut -d' ' -f1 /proc/uptime)s"
while read -r m; do
	insmod "/modules/$m" || say "insmod $m failed"
done </modules/order
say "modules loaded at $(cut -d' ' -f1 /proc/uptime)"
P9=trans=virtio,version=9p2000.L,ro,msize=262144,cache=loose
mount -t 9p -o $P9 "$XDPLB_VM_ROOT_TAG" /lower ||
	die "cannot mount the root file system ($XDPLB_VM_ROOT_TAG) over 9p"
mount -t tmpfs -o mode=0755,size=60% rw /rw
mkdir -p /rw/upper /rw/work
say "root ($XDPLB_VM_ROOT_TAG) mounted at $(cut -d' ' -f1 /proc/uptime)"
R=/newroot
if ! mount -t overlay -o lowerdir=/lower,upperdir=/rw/upper,workdir=/rw/work overlay $R; then
	say "overlayfs failed: read-only root with tmpfs on /tmp and /var"
	mount --bind /lower $R
	mount -t tmpfs -o mode=0755 var $R/var
	mount -t tmpfs -o mode=1777 tmp $R/tmp
fi
mount --move /proc $R/proc
mount --move /sys $R/sys
mount --move /dev $R/dev
mkdir -p $R/dev/pts $R/dev/shm
mount -t devpts -o newinstance,ptmxmode=0666 devpts $R/dev/pts
mount -t tmpfs -o mode=1777 shm $R/dev/shm
mount -t tmpfs -o mode=0755 run $R/run
mount -t bpf -o mode=0700 bpf $R/sys/fs/bpf || die "cannot mount bpffs"
mount -t debugfs debugfs $R/sys/kernel/debug || say "no debugfs"
[ -d $R/sys/kernel/tracing ] && mount -t tracefs tracefs $R/sys/kernel/tracing 2>/dev/null
mount -t cgroup2 cgroup2 $R/sys/fs/cgroup 2>/dev/null
KVER=$(uname -r)
if [ -n "$XDPLB_VM_WORK" ]; then
	mkdir -p /worklower /rw/workupper /rw/workwork "$R$XDPLB_VM_WORK"
	mount -t 9p -o $P9 work /worklower || die "cannot mount the work directory over 9p"
	mount -t overlay -o lowerdir=/worklower,upperdir=/rw/workupper,workdir=/rw/workwork overlay "$R$XDPLB_VM_WORK" ||
		die "cannot mount an overlay on the work directory"
fi
if [ -n "$XDPLB_VM_MODULES_TAG" ]; then
	mkdir -p "$R/lib/modules/$KVER"
	mount -t 9p -o $P9 "$XDPLB_VM_MODULES_TAG" "$R/lib/modules/$KVER" || die "cannot mount the kernel's modules over 9p"
elif [ -d "$R$XDPLB_VM_MODDIR" ]; then
	mkdir -p "$R/lib/modules/$KVER" && mount --bind "$R$XDPLB_VM_MODDIR" "$R/lib/modules/$KVER"
fi
if [ ! -x $R/sbin/modprobe ] && [ -x "$R$XDPLB_VM_BUSYBOX" ]; then
	mkdir -p $R/run/xdplb-vm/sbin
	ln -s "$XDPLB_VM_BUSYBOX" $R/run/xdplb-vm/sbin/modprobe
	echo /run/xdplb-vm/sbin/modprobe >$R/proc/sys/kernel/modprobe
fi
say "file systems ready at $(cut -d' ' -f1 $R/proc/uptime)"
ip link set lo up
hostname xdplb-vm
mkdir -p $R/run/xdplb-vm
cp /xdplb-vm/* $R/run/xdplb-vm/
exec switch_root $R /bin/sh /run/xdplb-vm/stage2.sh
`

// stage2Script runs as PID 1 on the guest's root (with its /bin/sh): it
// names the userland (the first line of ldd --version), runs the command and
// prints its exit code, then powers off.
const stage2Script = `#!/bin/sh
# Runs the command of an xdplb test VM; written by tests/vm/vmrun.
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export HOME=/root TERM=dumb LANG=C.UTF-8 XDPLB_VM=1 XDPLB_VM_BPFFS=/sys/fs/bpf
. /run/xdplb-vm/env
cd "$XDPLB_VM_CWD" 2>/dev/null || cd /
exec </dev/null
echo "XDPLB-VM-USERLAND-${XDPLB_VM_NONCE} $( (ldd --version 2>&1 || echo "no ldd") | head -n 1)"
echo "XDPLB-VM-READY-${XDPLB_VM_NONCE} $(uname -r) $(cut -d' ' -f1 /proc/uptime)"
if [ -x /bin/bash ]; then
	/bin/bash /run/xdplb-vm/cmd.sh
else
	/bin/sh /run/xdplb-vm/cmd.sh
fi
rc=$?
echo
echo "XDPLB-VM-EXIT-${XDPLB_VM_NONCE}=$rc"
sync
echo o >/proc/sysrq-trigger
sleep 60
`

// shellQuote quotes s for POSIX sh.
func shellQuote(s string) string {
	if s != "" && strings.Trim(s, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_./=:,+@%") == "" {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

// commandScript makes the guest's cmd.sh from the words after "--": one word
// is a shell script ("uname -r; ls /sys/fs/bpf"), several are a command and
// its arguments, run as they are.
func commandScript(argv []string) string {
	if len(argv) == 1 {
		return argv[0] + "\n"
	}
	q := make([]string, len(argv))
	for i, a := range argv {
		q[i] = shellQuote(a)
	}
	return strings.Join(q, " ") + "\n"
}

// matrixScript runs each test in turn, each bounded by timeout(1), between
// begin and end markers, and always exits 0: the results are in the markers.
func matrixScript(tests []string, perTest string) string {
	var b strings.Builder
	b.WriteString("run_test() {\n")
	b.WriteString("\techo \"XDPLB-VM-BEGIN-${XDPLB_VM_NONCE} $1\"\n")
	b.WriteString("\ttimeout -k 10 " + perTest + " /bin/sh -c \"$2\"\n")
	b.WriteString("\trc=$?\n")
	b.WriteString("\techo; echo \"XDPLB-VM-END-${XDPLB_VM_NONCE} $1 rc=$rc\"\n")
	b.WriteString("}\n")
	for i, t := range tests {
		fmt.Fprintf(&b, "run_test %d %s\n", i, shellQuote(t))
	}
	b.WriteString("exit 0\n")
	return b.String()
}

// envFile exports the variables for stage2 and the command.
func envFile(vars map[string]string) string {
	keys := make([]string, 0, len(vars))
	for k := range vars {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var b strings.Builder
	for _, k := range keys {
		fmt.Fprintf(&b, "export %s=%s\n", k, shellQuote(vars[k]))
	}
	return b.String()
}
