package daemon

import (
	"bytes"
	"runtime"
	"unsafe"

	"golang.org/x/sys/unix"
)

// The ethtool ioctls preflight reads (ethtool -i, -l, -k): get requests
// only, which change nothing and need no privilege.

// ifreqData is struct ifreq with ifr_data.
type ifreqData struct {
	name [unix.IFNAMSIZ]byte
	data unsafe.Pointer
	_    [24 - unsafe.Sizeof(uintptr(0))]byte
}

func ethtool(iface string, data unsafe.Pointer) error {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	var ifr ifreqData
	copy(ifr.name[:], iface)
	ifr.data = data
	_, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), unix.SIOCETHTOOL, uintptr(unsafe.Pointer(&ifr)))
	runtime.KeepAlive(&ifr)
	if errno != 0 {
		return errno
	}
	return nil
}

// ethDriver is the interface's driver (ethtool -i).
func ethDriver(iface string) (string, error) {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return "", err
	}
	defer unix.Close(fd)
	info, err := unix.IoctlGetEthtoolDrvinfo(fd, iface)
	if err != nil {
		return "", err
	}
	return string(bytes.TrimRight(info.Driver[:], "\x00")), nil
}

// ethSSFeatures is ETH_SS_FEATURES, the string set of feature names.
const ethSSFeatures = 4

type ethtoolChannels struct {
	cmd                                         uint32
	maxRx, maxTx, maxOther, maxCombined         uint32
	rxCount, txCount, otherCount, combinedCount uint32
}

// ethChannels is the combined queues in use and the most offered (ethtool -l).
func ethChannels(iface string) (combined, max int, err error) {
	c := ethtoolChannels{cmd: unix.ETHTOOL_GCHANNELS}
	if err := ethtool(iface, unsafe.Pointer(&c)); err != nil {
		return 0, 0, err
	}
	return int(c.combinedCount), int(c.maxCombined), nil
}

// ethFeatures reads the active state of the named features (ethtool -k).
func ethFeatures(iface string, names ...string) (map[string]bool, error) {
	// The number of feature names.
	var sset struct {
		cmd      uint32
		reserved uint32
		mask     uint64
		data     [1]uint32
	}
	sset.cmd, sset.mask = unix.ETHTOOL_GSSET_INFO, 1<<ethSSFeatures
	if err := ethtool(iface, unsafe.Pointer(&sset)); err != nil {
		return nil, err
	}
	n := int(sset.data[0])
	if n == 0 || n > 4096 {
		return map[string]bool{}, nil
	}
	// Their names, 32 bytes each.
	strs := make([]byte, 12+32*n)
	*(*uint32)(unsafe.Pointer(&strs[0])) = unix.ETHTOOL_GSTRINGS
	*(*uint32)(unsafe.Pointer(&strs[4])) = ethSSFeatures
	*(*uint32)(unsafe.Pointer(&strs[8])) = uint32(n)
	if err := ethtool(iface, unsafe.Pointer(&strs[0])); err != nil {
		return nil, err
	}
	// Their state: 32 features a block of available, requested, active,
	// never_changed.
	blocks := (n + 31) / 32
	feats := make([]uint32, 2+4*blocks)
	feats[0], feats[1] = unix.ETHTOOL_GFEATURES, uint32(blocks)
	if err := ethtool(iface, unsafe.Pointer(&feats[0])); err != nil {
		return nil, err
	}
	want := map[string]bool{}
	for _, name := range names {
		want[name] = true
	}
	out := map[string]bool{}
	for i := range n {
		name := string(bytes.TrimRight(strs[12+32*i:12+32*(i+1)], "\x00"))
		if !want[name] {
			continue
		}
		active := feats[2+4*(i/32)+2]
		out[name] = active&(1<<(i%32)) != 0
	}
	return out, nil
}
