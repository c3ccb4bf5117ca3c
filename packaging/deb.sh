#!/usr/bin/env bash
# Builds the Debian package xdplb_<version>_<arch>.deb with dpkg-deb (no
# root, no debhelper): the static binary as /usr/bin/xdplb, the systemd unit,
# /etc/xdplb/xdplb.yaml as a conffile, the keepalived sample and the docs,
# the man page and the bash, zsh and fish completions the binary prints
# itself (xdplb man, xdplb completion: the same command tree as its help),
# and the maintainer scripts of packaging/deb/.
#
#   packaging/deb.sh [-o OUTDIR] [-v VERSION]     (make deb runs it)
#
# VERSION is `git describe` (a leading v is dropped; v1.2.0-3-gabc1234
# becomes 1.2.0+3.gabc1234; without a tag, 0.0~git<commits>.<hash>).
# GOOS/GOARCH cross-compile as for go build (linux only); the package's
# architecture follows GOARCH. Prints the path of the package it wrote.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"

out=$repo
version=""
while getopts "o:v:" opt; do
	case $opt in
	o) out=$OPTARG ;;
	v) version=$OPTARG ;;
	*) echo "usage: packaging/deb.sh [-o OUTDIR] [-v VERSION]" >&2; exit 2 ;;
	esac
done
GO=${GO:-$(command -v go || echo /usr/local/go/bin/go)}
[[ -n $version ]] || version=$(git describe --tags --always --dirty 2>/dev/null || echo dev)

die() { echo "packaging/deb.sh: $*" >&2; exit 1; }
command -v dpkg-deb >/dev/null || die "dpkg-deb not found (apt-get install dpkg)"

# The Debian version: only [0-9A-Za-z.+~] and starting with a digit; no
# hyphen (a native package has no Debian revision).
debversion() {
	local v=${1#v} n
	if [[ $v =~ ^[0-9a-f]{4,40}(-dirty)?$ || ! $v =~ ^[0-9] ]]; then
		# No tag: git describe --always gave a commit hash.
		n=$(git rev-list --count HEAD 2>/dev/null || echo 0)
		v="0.0~git${n}.${v//-/.}"
	else
		v=${v/-/+}
		v=${v//-/.}
	fi
	echo "${v//[^0-9A-Za-z.+~]/.}"
}

goos=$("$GO" env GOOS)
goarch=$("$GO" env GOARCH)
[[ $goos == linux ]] || die "GOOS=$goos: xdplb runs on Linux only"
case $goarch in
amd64 | arm64 | s390x | riscv64) arch=$goarch ;;
386) arch=i386 ;;
arm) arch=armhf ;;
ppc64le) arch=ppc64el ;;
*) die "GOARCH=$goarch: no Debian architecture for it" ;;
esac
debver=$(debversion "$version")
export SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || date +%s)}

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
stage=$work/stage
ldflags="-X github.com/xdplb/xdplb/control/daemon.Version=$version"

# The binary: static (no cgo), no build paths, stripped.
CGO_ENABLED=0 "$GO" build -trimpath -ldflags "$ldflags -s -w" -o "$work/xdplb" ./cmd/xdplb
# The man page and completions come from a binary this machine runs: the
# packaged one, or a native build of it when cross-compiling.
helpbin=$work/xdplb
if ! "$helpbin" version >/dev/null 2>&1; then
	helpbin=$work/xdplb-native
	env -u GOOS -u GOARCH CGO_ENABLED=0 "$GO" build -trimpath -ldflags "$ldflags" -o "$helpbin" ./cmd/xdplb
fi
"$helpbin" man >"$work/xdplb.8"
for sh in bash zsh fish; do
	"$helpbin" completion "$sh" >"$work/xdplb.$sh"
done

doc=$stage/usr/share/doc/xdplb
install -D -m 0755 "$work/xdplb" "$stage/usr/bin/xdplb"
install -D -m 0644 packaging/xdplb.service "$stage/lib/systemd/system/xdplb.service"
install -D -m 0644 packaging/xdplb.yaml "$stage/etc/xdplb/xdplb.yaml"
install -D -m 0644 packaging/keepalived.conf "$doc/examples/keepalived.conf"
install -D -m 0644 README.md "$doc/README.md"
install -D -m 0644 docs/ARCHITECTURE.md "$doc/ARCHITECTURE.md"
install -D -m 0644 "$work/xdplb.bash" "$stage/usr/share/bash-completion/completions/xdplb"
install -D -m 0644 "$work/xdplb.zsh" "$stage/usr/share/zsh/vendor-completions/_xdplb"
install -D -m 0644 "$work/xdplb.fish" "$stage/usr/share/fish/vendor_completions.d/xdplb.fish"
install -d -m 0755 "$stage/usr/share/man/man8"
gzip -9n <"$work/xdplb.8" >"$stage/usr/share/man/man8/xdplb.8.gz"
chmod 0644 "$stage/usr/share/man/man8/xdplb.8.gz"

# changelog.gz: a native package's, one entry for this build.
{
	echo "xdplb ($debver) unstable; urgency=medium"
	echo
	echo "  * Built from $version ($(git rev-parse --short=12 HEAD 2>/dev/null || echo 'no git'))."
	echo
	echo " -- xdplb <dev@xdplb.invalid>  $(LC_ALL=C date -u -R -d "@$SOURCE_DATE_EPOCH")"
} | gzip -9n >"$doc/changelog.gz"
chmod 0644 "$doc/changelog.gz"

# copyright: the data path's licence, and that of every module linked into
# the static binary (their LICENSE/NOTICE files, from the module cache).
{
	cat packaging/deb/copyright
	echo
	echo "The static binary /usr/bin/xdplb contains the Go runtime and these modules:"
	echo
	echo "Files: Go standard library and runtime ($("$GO" env GOVERSION))"
	echo "License-File: LICENSE"
	sed 's/^$/./; s/^/ /' "$("$GO" env GOROOT)/LICENSE"
	echo
	"$GO" version -m "$work/xdplb" | awk '$1 == "dep" { print $2 "@" $3 }' | while read -r mod; do
		dir=$("$GO" list -m -f '{{.Dir}}' "$mod" 2>/dev/null || true)
		echo "Files: $mod"
		if [[ -z $dir ]]; then
			echo "Comment: licence not found in the module cache"
		else
			for f in "$dir"/LICENSE* "$dir"/NOTICE* "$dir"/COPYING*; do
				[[ -f $f ]] || continue
				echo "License-File: $(basename "$f")"
				sed 's/^$/./; s/^/ /' "$f"
			done
		fi
		echo
	done
} >"$doc/copyright"
chmod 0644 "$doc/copyright"

# Control files.
install -d -m 0755 "$stage/DEBIAN"
for s in postinst prerm postrm; do
	install -m 0755 "packaging/deb/$s" "$stage/DEBIAN/$s"
done
echo /etc/xdplb/xdplb.yaml >"$stage/DEBIAN/conffiles"
(cd "$stage" && find . -type f ! -path './DEBIAN/*' -printf '%P\0' | LC_ALL=C sort -z | xargs -0 md5sum) >"$stage/DEBIAN/md5sums"
size=$(du -sk --exclude=DEBIAN "$stage" | cut -f1)
sed -e "s/@VERSION@/$debver/" -e "s/@ARCH@/$arch/" -e "s/@SIZE@/$size/" packaging/deb/control >"$stage/DEBIAN/control"
chmod 0644 "$stage/DEBIAN/control" "$stage/DEBIAN/conffiles" "$stage/DEBIAN/md5sums"

mkdir -p "$out"
deb="$out/xdplb_${debver}_${arch}.deb"
# One package per architecture in OUTDIR, so `apt install ./xdplb_*.deb` is unambiguous.
for old in "$out"/xdplb_*_"$arch".deb; do
	[[ -f $old && $old != "$deb" ]] && rm -f "$old"
done
dpkg-deb --root-owner-group -Zxz --build "$stage" "$deb" >/dev/null
echo "$deb"
