package main

import (
	"context"
	"io"
	"log/slog"
	"strconv"
	"sync"

	"github.com/xdplb/xdplb/control/config"
)

// newLogger makes the daemon's logger: text (key=value) or JSON lines on
// w, at the level of level. Under systemd (journal: stderr is the
// journal's stream) a line carries no timestamp (the journal has its own)
// and starts with its syslog priority, "<4>" for a warning, which journald
// takes as the entry's priority: `journalctl -u xdplb -p warning` then
// finds the warnings.
func newLogger(w io.Writer, format string, journal bool, level *slog.LevelVar) *slog.Logger {
	opts := &slog.HandlerOptions{Level: level}
	if journal {
		opts.ReplaceAttr = func(groups []string, a slog.Attr) slog.Attr {
			if len(groups) == 0 && a.Key == slog.TimeKey {
				return slog.Attr{}
			}
			return a
		}
		pw := &priorityWriter{w: w}
		w = pw
		return slog.New(&journalHandler{inner: newHandler(w, format, opts), pw: pw})
	}
	return slog.New(newHandler(w, format, opts))
}

func newHandler(w io.Writer, format string, opts *slog.HandlerOptions) slog.Handler {
	if format == config.LogJSON {
		return slog.NewJSONHandler(w, opts)
	}
	return slog.NewTextHandler(w, opts)
}

// priority is the syslog priority of a level (sd-daemon(3)).
func priority(l slog.Level) int {
	switch {
	case l >= slog.LevelError:
		return 3 // err
	case l >= slog.LevelWarn:
		return 4 // warning
	case l >= slog.LevelInfo:
		return 6 // info
	}
	return 7 // debug
}

// priorityWriter puts "<N>" before each line it is given. slog's
// handlers write each record in one Write, which journalHandler makes
// one at a time.
type priorityWriter struct {
	mu   sync.Mutex
	w    io.Writer
	prio int
	buf  []byte
}

func (p *priorityWriter) Write(b []byte) (int, error) {
	p.buf = append(append(append(p.buf[:0], '<'), strconv.Itoa(p.prio)...), '>')
	p.buf = append(p.buf, b...)
	if _, err := p.w.Write(p.buf); err != nil {
		return 0, err
	}
	return len(b), nil
}

// journalHandler sets the priority of each record's line.
type journalHandler struct {
	inner slog.Handler
	pw    *priorityWriter
}

func (h *journalHandler) Enabled(ctx context.Context, l slog.Level) bool {
	return h.inner.Enabled(ctx, l)
}

func (h *journalHandler) Handle(ctx context.Context, r slog.Record) error {
	h.pw.mu.Lock()
	defer h.pw.mu.Unlock()
	h.pw.prio = priority(r.Level)
	return h.inner.Handle(ctx, r)
}

func (h *journalHandler) WithAttrs(as []slog.Attr) slog.Handler {
	return &journalHandler{inner: h.inner.WithAttrs(as), pw: h.pw}
}

func (h *journalHandler) WithGroup(name string) slog.Handler {
	return &journalHandler{inner: h.inner.WithGroup(name), pw: h.pw}
}
