package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestParsePortRange(t *testing.T) {
	tests := []struct {
		in      string
		want    PortRange
		wantErr string
	}{
		{in: "61000-65535", want: PortRange{61000, 65535}},
		{in: " 1024 - 2048 ", want: PortRange{1024, 2048}},
		{in: "7000-7000", want: PortRange{7000, 7000}},
		{in: "61000", wantErr: `port range "61000": want LO-HI, e.g. 61000-65535`},
		{in: "", wantErr: "want LO-HI"},
		{in: "a-b", wantErr: `port "a" is not a number`},
		{in: "0-100", wantErr: "port 0 out of range 1-65535"},
		{in: "1024-65536", wantErr: "port 65536 out of range 1-65535"},
		{in: "2000-1000", wantErr: "2000 is above 1000: write the lower port first"},
		{in: "-5", wantErr: `port "" is not a number`},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := ParsePortRange(tt.in)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("ParsePortRange() = %v, %v, want an error containing %q", got, err, tt.wantErr)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("ParsePortRange() = %v, %v, want %v", got, err, tt.want)
			}
			if again, _ := ParsePortRange(got.String()); again != got {
				t.Errorf("String() %q does not parse back", got.String())
			}
		})
	}
}

func TestPortRangeOverlaps(t *testing.T) {
	eph := PortRange{32768, 60999}
	tests := []struct {
		a, b PortRange
		want bool
	}{
		{PortRange{61000, 65535}, eph, false},
		{PortRange{60999, 65535}, eph, true},
		{PortRange{1024, 32767}, eph, false},
		{PortRange{1024, 32768}, eph, true},
		{PortRange{40000, 40000}, eph, true},
		{PortRange{1, 65535}, eph, true},
		{PortRange{}, eph, false},
		{PortRange{2000, 1000}, PortRange{1500, 1500}, false}, // empty: Lo > Hi
	}
	for _, tt := range tests {
		if got := tt.a.Overlaps(tt.b); got != tt.want {
			t.Errorf("%v.Overlaps(%v) = %v, want %v", tt.a, tt.b, got, tt.want)
		}
		if got := tt.b.Overlaps(tt.a); got != tt.want {
			t.Errorf("%v.Overlaps(%v) = %v, want %v (not symmetric)", tt.b, tt.a, got, tt.want)
		}
	}
}

func TestPortRangeSizeContains(t *testing.T) {
	r := PortRange{61000, 65535}
	if r.Size() != 4536 {
		t.Errorf("Size() = %d, want 4536", r.Size())
	}
	if (PortRange{}).Size() != 0 || !(PortRange{}).IsZero() {
		t.Error("the zero PortRange must be unset and empty")
	}
	for port, want := range map[uint16]bool{60999: false, 61000: true, 65535: true, 6443: false} {
		if got := r.Contains(port); got != want {
			t.Errorf("Contains(%d) = %v, want %v", port, got, want)
		}
	}
}

func TestReadEphemeralRange(t *testing.T) {
	dir := t.TempDir()
	tests := []struct {
		name    string
		content *string // nil: no file
		want    PortRange
		wantErr string
	}{
		{name: "kernel format", content: ptr("32768\t60999\n"), want: PortRange{32768, 60999}},
		{name: "spaces", content: ptr("1024 65000"), want: PortRange{1024, 65000}},
		{name: "missing", wantErr: "read the kernel's ephemeral port range: open "},
		{name: "one field", content: ptr("32768\n"), wantErr: `"32768": want two ports`},
		{name: "garbage", content: ptr("x y\n"), wantErr: `port "x" is not a number`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(dir, strings.ReplaceAll(tt.name, " ", "_"))
			if tt.content != nil {
				if err := os.WriteFile(path, []byte(*tt.content), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			got, err := ReadEphemeralRange(path)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("ReadEphemeralRange() = %v, %v, want an error containing %q", got, err, tt.wantErr)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("ReadEphemeralRange() = %v, %v, want %v", got, err, tt.want)
			}
		})
	}
}

func ptr[T any](v T) *T { return &v }

func TestDefaultSNATPorts(t *testing.T) {
	usual := PortRange{32768, 60999}
	tests := []struct {
		name      string
		port      uint16
		local     bool
		ephemeral PortRange
		want      PortRange
	}{
		{"vip: everything above the frontend port", 6443, false, usual, PortRange{6444, 65535}},
		{"vip: the ephemeral range does not matter", 6443, false, PortRange{1024, 65535}, PortRange{6444, 65535}},
		{"vip: high frontend port: the wider range below", 60000, false, usual, PortRange{1024, 59999}},
		{"node address: above the usual ephemeral range", 6443, true, usual, PortRange{61000, 65535}},
		{"node address: frontend port inside the range above", 62000, true, usual, PortRange{62001, 65535}},
		{"node address: too little above, widest below", 6443, true, PortRange{32768, 65000}, PortRange{6444, 32767}},
		{"node address: nothing above", 6443, true, PortRange{20000, 65535}, PortRange{6444, 19999}},
		{"node address: no port left", 6443, true, PortRange{1024, 65535}, PortRange{}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := DefaultSNATPorts(tt.port, tt.local, tt.ephemeral)
			if got != tt.want {
				t.Fatalf("DefaultSNATPorts(%d, %v, %v) = %v, want %v", tt.port, tt.local, tt.ephemeral, got, tt.want)
			}
			if got.IsZero() {
				return
			}
			if got.Contains(tt.port) || got.Lo < 1024 {
				t.Errorf("%v contains the frontend port or a port below 1024", got)
			}
			if err := ValidateSNATAgainstKernel(tt.local, got, tt.ephemeral); err != nil {
				t.Errorf("the default fails ValidateSNATAgainstKernel: %v", err)
			}
		})
	}
}

func TestValidateSNATAgainstKernel(t *testing.T) {
	usual := PortRange{32768, 60999}
	tests := []struct {
		name      string
		local     bool
		snat      PortRange
		ephemeral PortRange
		wantErr   string
	}{
		{"vip may overlap", false, PortRange{10000, 59999}, usual, ""},
		{"node address, outside", true, PortRange{61000, 65535}, usual, ""},
		{"node address, overlapping", true, PortRange{30000, 40000}, usual,
			"snat-ports 30000-40000 overlap the kernel's ephemeral ports 32768-60999 (net.ipv4.ip_local_port_range) " +
				"and the frontend is this node's own address, so its own connections could take a translated flow's port: " +
				"set snat-ports outside it, e.g. 61000-65535, or leave it unset to have one chosen"},
		{"node address, ephemeral covers all", true, PortRange{30000, 40000}, PortRange{1024, 65535},
			"narrow net.ipv4.ip_local_port_range"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := ValidateSNATAgainstKernel(tt.local, tt.snat, tt.ephemeral)
			if got := errString(err); (tt.wantErr == "") != (got == "") || !strings.HasSuffix(got, tt.wantErr) {
				t.Errorf("ValidateSNATAgainstKernel() = %q, want %q", got, tt.wantErr)
			}
		})
	}
}

func TestFreePortRanges(t *testing.T) {
	tests := []struct {
		taken []PortRange
		want  []PortRange
	}{
		{nil, []PortRange{{1024, 65535}}},
		{[]PortRange{{6443, 6443}}, []PortRange{{1024, 6442}, {6444, 65535}}},
		{[]PortRange{{1024, 1024}, {65535, 65535}}, []PortRange{{1025, 65534}}},
		{[]PortRange{{32768, 60999}, {40000, 40000}, {6443, 6443}}, []PortRange{{1024, 6442}, {6444, 32767}, {61000, 65535}}},
		{[]PortRange{{1, 65535}}, nil},
		{[]PortRange{{2000, 1000}}, []PortRange{{1024, 65535}}}, // empty ranges take nothing
	}
	for _, tt := range tests {
		got := freePortRanges(tt.taken)
		if len(got) != len(tt.want) {
			t.Errorf("freePortRanges(%v) = %v, want %v", tt.taken, got, tt.want)
			continue
		}
		for i := range got {
			if got[i] != tt.want[i] {
				t.Errorf("freePortRanges(%v) = %v, want %v", tt.taken, got, tt.want)
				break
			}
		}
	}
}
