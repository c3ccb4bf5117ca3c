package main

import (
	"os"
	"strings"
	"testing"

	"github.com/xdplb/xdplb/control/config"
)

// settingsTable is the README's table of settings, made from the settings
// table: every flag and YAML key, its default, what it does, and whether
// a reload applies it.
func settingsTable() string {
	var b strings.Builder
	b.WriteString("| flag and YAML key | default | meaning | reload |\n| --- | --- | --- | --- |\n")
	for _, s := range config.Settings {
		key := "`--" + s.Key + "`"
		for _, a := range s.Aliases {
			if a.Deprecated {
				key += " (formerly `" + a.Key + ":`)"
			} else {
				key += " (YAML also `" + a.Key + ":`)"
			}
		}
		def := s.Default
		if def != "" && !s.Derived {
			def = "`" + def + "`"
		}
		usage := strings.ReplaceAll(s.Usage, "|", "\\|")
		if len(s.Choices) > 0 {
			usage += " (" + strings.Join(s.Choices, ", ") + ")"
		}
		b.WriteString("| " + key + " | " + def + " | " + usage + " | " + s.Reload.String() + " |\n")
	}
	return b.String()
}

const (
	readmeBegin = "<!-- settings: made from control/config's table by cmd/xdplb's TestREADMESettings -->\n"
	readmeEnd   = "<!-- /settings -->"
)

// TestREADMESettings: the README's table of settings is the settings
// table's (XDPLB_UPDATE_README=1 rewrites it).
func TestREADMESettings(t *testing.T) {
	data, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	readme := string(data)
	i, j := strings.Index(readme, readmeBegin), strings.Index(readme, readmeEnd)
	if i < 0 || j < i {
		t.Fatalf("README.md lacks the settings markers %q ... %q", readmeBegin, readmeEnd)
	}
	want := settingsTable()
	if got := readme[i+len(readmeBegin) : j]; got != want {
		if os.Getenv("XDPLB_UPDATE_README") == "1" {
			os.WriteFile("../../README.md", []byte(readme[:i+len(readmeBegin)]+want+readme[j:]), 0o644)
			return
		}
		t.Errorf("README.md's settings table is not the table's; run XDPLB_UPDATE_README=1 go test ./cmd/xdplb -run TestREADMESettings")
	}
}
