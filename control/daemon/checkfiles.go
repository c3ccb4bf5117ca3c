package daemon

import (
	"errors"
	"io"
	"io/fs"
	"log/slog"

	"github.com/xdplb/xdplb/control/config"
	"github.com/xdplb/xdplb/control/health"
)

// CheckFiles reads the files a configuration names as the daemon does at
// start, and changes nothing: the checks' CA, certificate and key
// (parsed), the token, flow sync's key (long enough). For `xdplb config
// check`, which may run as another user than root: a file that user may
// not read is then a warning, as the daemon (root) reads it.
func CheckFiles(cfg config.Config, root bool) (warnings []string, err error) {
	denied := func(err error) bool { return !root && errors.Is(err, fs.ErrPermission) }
	warn := func(what string, err error) {
		warnings = append(warnings, what+": not readable by this user; the daemon (root) reads it: "+err.Error())
	}
	// The checker loads its CA, certificate and key, and the https
	// check its token, when it is made.
	if _, err := health.NewChecker(cfg.Check, cfg.CheckOptions(cfg.CheckSource)); err != nil {
		if !denied(err) {
			return warnings, err
		}
		warn("check files", err)
	}
	if cfg.SyncPeer.IsValid() {
		if _, err := readSyncKey(cfg.SyncKeyFile, slog.New(slog.NewTextHandler(io.Discard, nil))); err != nil {
			if !denied(err) {
				return warnings, err
			}
			warn("sync-key-file", err)
		}
	}
	return warnings, nil
}
