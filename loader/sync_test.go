package loader

import (
	"bytes"
	"encoding/binary"
	"net/netip"
	"testing"

	"github.com/xdplb/xdplb/bpf"
)

// TestDecodeSyncEvent: the hand-written decoder reads struct sync_event
// as its generated Go type lays it out.
func TestDecodeSyncEvent(t *testing.T) {
	want := bpf.SyncEvent{Kind: 1, State: 2, ClientFlags: 3, BackendFlags: 4, Backend: 5,
		Key:      bpf.Key(netip.MustParseAddrPort("10.10.10.101:40001"), netip.MustParseAddrPort("10.10.10.100:6443")),
		SnatPort: bpf.BE16(20001), ClientMac: [6]byte{1, 2, 3, 4, 5, 6}, ClientSeq: 7, BackendSeq: 8,
		CreatedNs: 9, LastSeenNs: 10}
	if n := binary.Size(want); n != syncEventLen {
		t.Fatalf("struct sync_event is %d bytes, the decoder reads %d", n, syncEventLen)
	}
	var buf bytes.Buffer
	binary.Write(&buf, binary.NativeEndian, want)
	got, err := DecodeSyncEvent(append(buf.Bytes(), 0, 0, 0, 0)) // perf pads samples
	if err != nil || got != want {
		t.Fatalf("got  %+v %v\nwant %+v", got, err, want)
	}
	if _, err := DecodeSyncEvent(buf.Bytes()[:40]); err == nil {
		t.Fatal("a short sample decoded")
	}
}
