package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"time"
)

// LoadOptions configure RR, ConnRate and Bulk. Every load is bounded: it
// stops after Duration, or after N operations, whichever comes first; at
// least one of them must be set (Bulk needs Duration).
type LoadOptions struct {
	// Addr is the plain TCP sink, host:port.
	Addr string
	// Concurrency is the number of parallel workers (1 if 0).
	Concurrency int
	// Duration bounds the run.
	Duration time.Duration
	// N bounds the number of operations (requests or connections), over
	// all workers. Not used by Bulk.
	N int
	// Size is the request size in bytes (64 if 0); Bulk writes buffers of
	// Size bytes (64 KiB if 0).
	Size int
	// Timeout bounds one operation (DefaultTimeout if 0).
	Timeout time.Duration
	// ResetClose closes ConnRate connections with a RST (SO_LINGER 0)
	// instead of a FIN, so the client keeps no TIME_WAIT sockets and does
	// not run out of ephemeral ports in long runs.
	ResetClose bool
	// DialContext, if set, opens the connections (e.g. from a namespace).
	DialContext DialFunc
}

// LoadResult is the outcome of a load run.
type LoadResult struct {
	Kind        string  `json:"kind"`
	Addr        string  `json:"addr"`
	Concurrency int     `json:"concurrency"`
	Ops         uint64  `json:"ops"`
	Failures    uint64  `json:"failures"`
	OpsPerSec   float64 `json:"ops_per_sec"`
	// Errors counts failures by class (see Classify).
	Errors     map[string]uint64 `json:"errors,omitempty"`
	FirstError string            `json:"first_error,omitempty"`
	// Latency of successful operations (RR: one round trip; ConnRate:
	// connect + write + read + close).
	Latency LatencySummary `json:"latency"`
	// Bytes sent (Bulk) and the resulting rate.
	Bytes     uint64        `json:"bytes,omitempty"`
	Gbps      float64       `json:"gbps,omitempty"`
	Elapsed   time.Duration `json:"-"`
	ElapsedMS float64       `json:"elapsed_ms"`
}

func (o *LoadOptions) normalize(kind string) error {
	if o.Addr == "" {
		return fmt.Errorf("%s: no address", kind)
	}
	if o.Concurrency <= 0 {
		o.Concurrency = 1
	}
	if o.Duration <= 0 && (o.N <= 0 || kind == "bulk") {
		if kind == "bulk" {
			return errors.New("bulk: a duration is required")
		}
		return fmt.Errorf("%s: unbounded: set a duration or a count", kind)
	}
	if o.Size <= 0 {
		o.Size = 64
		if kind == "bulk" {
			o.Size = 64 << 10
		}
	}
	if o.Timeout <= 0 {
		o.Timeout = DefaultTimeout
	}
	if o.DialContext == nil {
		d := &net.Dialer{}
		o.DialContext = d.DialContext
	}
	return nil
}

// worker state, merged at the end.
type loadWorker struct {
	ops, failures uint64
	bytes         uint64
	hist          Histogram
	errors        map[string]uint64
	firstErr      error
}

func (w *loadWorker) fail(err error) {
	w.failures++
	if w.errors == nil {
		w.errors = map[string]uint64{}
	}
	w.errors[Classify(err)]++
	if w.firstErr == nil {
		w.firstErr = err
	}
}

// runLoad runs work on Concurrency workers until ctx (with Duration) is done
// or N operations were claimed.
func runLoad(ctx context.Context, kind string, o LoadOptions, work func(ctx context.Context, w *loadWorker, claim func() bool)) LoadResult {
	if o.Duration > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, o.Duration)
		defer cancel()
	}
	var mu sync.Mutex
	claimed := 0
	claim := func() bool {
		if ctx.Err() != nil {
			return false
		}
		if o.N <= 0 {
			return true
		}
		mu.Lock()
		defer mu.Unlock()
		if claimed >= o.N {
			return false
		}
		claimed++
		return true
	}
	workers := make([]*loadWorker, o.Concurrency)
	var wg sync.WaitGroup
	start := time.Now()
	for i := range workers {
		w := &loadWorker{}
		workers[i] = w
		wg.Add(1)
		go func() {
			defer wg.Done()
			work(ctx, w, claim)
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)

	res := LoadResult{Kind: kind, Addr: o.Addr, Concurrency: o.Concurrency, Elapsed: elapsed, ElapsedMS: ms(elapsed)}
	var hist Histogram
	for _, w := range workers {
		res.Ops += w.ops
		res.Failures += w.failures
		res.Bytes += w.bytes
		hist.Merge(&w.hist)
		for k, v := range w.errors {
			if res.Errors == nil {
				res.Errors = map[string]uint64{}
			}
			res.Errors[k] += v
		}
		if res.FirstError == "" && w.firstErr != nil {
			res.FirstError = w.firstErr.Error()
		}
	}
	res.Latency = hist.Summary()
	if secs := elapsed.Seconds(); secs > 0 {
		res.OpsPerSec = float64(res.Ops) / secs
		res.Gbps = float64(res.Bytes) * 8 / secs / 1e9
	}
	return res
}

// pause backs off after a failure, so a dead sink is not hammered in a hot
// loop; it returns false when the run is over.
func pause(ctx context.Context) bool {
	t := time.NewTimer(10 * time.Millisecond)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

// RR measures request/response latency: each worker keeps one connection to
// an echo sink and does Size-byte round trips back to back; a failed
// connection is replaced.
func RR(ctx context.Context, o LoadOptions) (LoadResult, error) {
	if err := o.normalize("rr"); err != nil {
		return LoadResult{}, err
	}
	res := runLoad(ctx, "rr", o, func(ctx context.Context, w *loadWorker, claim func() bool) {
		req := make([]byte, o.Size)
		for i := range req {
			req[i] = byte(i)
		}
		resp := make([]byte, o.Size)
		var conn net.Conn
		stop := func() bool { return false }
		drop := func() {
			if conn != nil {
				stop()
				conn.Close()
				conn = nil
			}
		}
		defer drop()
		for claim() {
			if conn == nil {
				dctx, cancel := context.WithTimeout(ctx, o.Timeout)
				c, err := o.DialContext(dctx, "tcp", o.Addr)
				cancel()
				if err != nil {
					if ctx.Err() != nil {
						return
					}
					w.fail(err)
					if !pause(ctx) {
						return
					}
					continue
				}
				conn = c
				stop = context.AfterFunc(ctx, func() { _ = c.SetDeadline(time.Unix(1, 0)) })
			}
			t0 := time.Now()
			_ = conn.SetDeadline(t0.Add(o.Timeout))
			if ctx.Err() != nil {
				return // the run ended while the deadline was being set
			}
			_, err := conn.Write(req)
			if err == nil {
				_, err = io.ReadFull(conn, resp)
			}
			if err != nil {
				if ctx.Err() != nil {
					return // the deadline we set to stop
				}
				w.fail(err)
				drop()
				continue
			}
			w.hist.Record(time.Since(t0))
			w.ops++
		}
	})
	return res, nil
}

// ConnRate measures new connections per second: each operation connects,
// writes Size bytes, reads them back from an echo sink and closes.
func ConnRate(ctx context.Context, o LoadOptions) (LoadResult, error) {
	if err := o.normalize("connrate"); err != nil {
		return LoadResult{}, err
	}
	res := runLoad(ctx, "connrate", o, func(ctx context.Context, w *loadWorker, claim func() bool) {
		req := make([]byte, o.Size)
		resp := make([]byte, o.Size)
		for claim() {
			t0 := time.Now()
			err := connOnce(ctx, o, req, resp)
			if err != nil {
				if ctx.Err() != nil {
					return
				}
				w.fail(err)
				if !pause(ctx) {
					return
				}
				continue
			}
			w.hist.Record(time.Since(t0))
			w.ops++
		}
	})
	return res, nil
}

func connOnce(ctx context.Context, o LoadOptions, req, resp []byte) error {
	octx, cancel := context.WithTimeout(ctx, o.Timeout)
	defer cancel()
	c, err := o.DialContext(octx, "tcp", o.Addr)
	if err != nil {
		return err
	}
	defer func() {
		if o.ResetClose {
			if tc, ok := c.(*net.TCPConn); ok {
				_ = tc.SetLinger(0)
			}
		}
		c.Close()
	}()
	stop := context.AfterFunc(octx, func() { _ = c.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	if _, err := c.Write(req); err != nil {
		return err
	}
	_, err = io.ReadFull(c, resp)
	return err
}

// Bulk measures throughput: each worker opens one connection to a discard
// sink and writes Size-byte buffers for Duration.
func Bulk(ctx context.Context, o LoadOptions) (LoadResult, error) {
	o.N = 0
	if err := o.normalize("bulk"); err != nil {
		return LoadResult{}, err
	}
	res := runLoad(ctx, "bulk", o, func(ctx context.Context, w *loadWorker, claim func() bool) {
		buf := make([]byte, o.Size)
		for i := range buf {
			buf[i] = byte(i * 7)
		}
		for ctx.Err() == nil {
			dctx, cancel := context.WithTimeout(ctx, o.Timeout)
			c, err := o.DialContext(dctx, "tcp", o.Addr)
			cancel()
			if err != nil {
				if ctx.Err() != nil {
					return
				}
				w.fail(err)
				if !pause(ctx) {
					return
				}
				continue
			}
			stop := context.AfterFunc(ctx, func() { _ = c.SetDeadline(time.Unix(1, 0)) })
			for claim() {
				_ = c.SetWriteDeadline(time.Now().Add(o.Timeout))
				if ctx.Err() != nil {
					break
				}
				n, err := c.Write(buf)
				w.bytes += uint64(n)
				if err != nil {
					if ctx.Err() == nil {
						w.fail(err)
					}
					break
				}
				w.ops++
			}
			stop()
			c.Close()
		}
	})
	return res, nil
}
