// Package agent is the client side of the xdplb tests, demo and
// benchmarks: it plays the K3s agents that reach the API servers through the
// load balancer. Whoami and Balance open a new TLS connection per request
// and show which server answered; Watch holds long-lived streams and tells a
// stream that was reset from one that hangs; RR, ConnRate and Bulk are
// bounded plain-TCP loads against apiserver's echo and discard sinks.
//
// Nothing here picks source addresses or ports: run it inside an agent's
// namespace (nsenter, ip netns exec, or testnet's Host.Do / Host.DialContext
// set as Client.DialContext).
package agent

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"strings"
	"sync"
	"syscall"
	"time"
)

// DefaultTimeout bounds one request (connect, TLS handshake, response).
const DefaultTimeout = 5 * time.Second

// DialFunc dials a connection; net.Dialer.DialContext and
// testnet.Host.DialContext have this type.
type DialFunc func(ctx context.Context, network, address string) (net.Conn, error)

// Client holds what every request needs. The zero value uses the system
// roots, no credentials, DefaultTimeout and the default dialer.
type Client struct {
	// TLS configures server verification and the client certificate.
	TLS *tls.Config
	// Token, if set, is sent as "Authorization: Bearer <Token>".
	Token string
	// Timeout bounds each request (DefaultTimeout if 0).
	Timeout time.Duration
	// DialContext, if set, opens the TCP connections.
	DialContext DialFunc
}

// TLSConfig builds a client TLS configuration from PEM files: caFile
// verifies the server (empty: system roots), certFile/keyFile are an
// optional client certificate, insecure skips verification.
func TLSConfig(caFile, certFile, keyFile string, insecure bool) (*tls.Config, error) {
	cfg := &tls.Config{MinVersion: tls.VersionTLS12, InsecureSkipVerify: insecure}
	if caFile != "" {
		pem, err := os.ReadFile(caFile)
		if err != nil {
			return nil, fmt.Errorf("read CA: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("read CA: no certificate in %s", caFile)
		}
		cfg.RootCAs = pool
	}
	if certFile != "" || keyFile != "" {
		pair, err := tls.LoadX509KeyPair(certFile, keyFile)
		if err != nil {
			return nil, fmt.Errorf("load client certificate: %w", err)
		}
		cfg.Certificates = []tls.Certificate{pair}
	}
	return cfg, nil
}

func (c *Client) timeout() time.Duration {
	if c.Timeout > 0 {
		return c.Timeout
	}
	return DefaultTimeout
}

// transport returns an HTTP/1.1 transport that opens a new TCP connection
// for every request (no keep-alive, no HTTP/2 multiplexing, no TLS session
// resumption), as a fresh agent would.
func (c *Client) transport() *http.Transport {
	dial := c.DialContext
	if dial == nil {
		d := &net.Dialer{}
		dial = d.DialContext
	}
	var tc *tls.Config
	if c.TLS != nil {
		tc = c.TLS.Clone()
	} else {
		tc = &tls.Config{MinVersion: tls.VersionTLS12}
	}
	tc.ClientSessionCache = nil
	tc.NextProtos = []string{"http/1.1"}
	return &http.Transport{
		DialContext:           dial,
		TLSClientConfig:       tc,
		DisableKeepAlives:     true,
		ForceAttemptHTTP2:     false,
		TLSNextProto:          map[string]func(string, *tls.Conn) http.RoundTripper{},
		TLSHandshakeTimeout:   c.timeout(),
		ResponseHeaderTimeout: c.timeout(),
		Proxy:                 nil,
	}
}

func (c *Client) newRequest(ctx context.Context, rawURL, path string) (*http.Request, error) {
	u, err := endpoint(rawURL, path)
	if err != nil {
		return nil, err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, err
	}
	if c.Token != "" {
		req.Header.Set("Authorization", "Bearer "+c.Token)
	}
	return req, nil
}

// endpoint returns rawURL with path when rawURL has none ("https://VIP:6443"
// → "https://VIP:6443/whoami"); a URL with a path is used as it is.
func endpoint(rawURL, path string) (string, error) {
	u, err := url.Parse(rawURL)
	if err != nil {
		return "", fmt.Errorf("bad URL %q: %w", rawURL, err)
	}
	if u.Scheme != "https" && u.Scheme != "http" {
		return "", fmt.Errorf("bad URL %q: want https://host:port", rawURL)
	}
	if u.Path == "" || u.Path == "/" {
		u.Path = path
	}
	return u.String(), nil
}

// StatusError is an HTTP answer other than 200.
type StatusError struct {
	Code int
	Body string
}

func (e *StatusError) Error() string {
	return fmt.Sprintf("HTTP %d: %s", e.Code, strings.TrimSpace(e.Body))
}

// get does one request on its own connection and returns the body.
func (c *Client) get(ctx context.Context, tr *http.Transport, rawURL, path string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, c.timeout())
	defer cancel()
	req, err := c.newRequest(ctx, rawURL, path)
	if err != nil {
		return "", err
	}
	resp, err := tr.RoundTrip(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	if err != nil {
		return "", err
	}
	if resp.StatusCode != http.StatusOK {
		return string(body), &StatusError{Code: resp.StatusCode, Body: string(body)}
	}
	return string(body), nil
}

// Whoami asks rawURL's /whoami over a new TLS connection and returns the
// name of the server that answered.
func (c *Client) Whoami(ctx context.Context, rawURL string) (string, error) {
	tr := c.transport()
	defer tr.CloseIdleConnections()
	body, err := c.get(ctx, tr, rawURL, "/whoami")
	if err != nil {
		return "", err
	}
	return strings.TrimSpace(body), nil
}

// Readyz asks rawURL's /readyz over a new connection; nil means 200.
func (c *Client) Readyz(ctx context.Context, rawURL string) error {
	tr := c.transport()
	defer tr.CloseIdleConnections()
	_, err := c.get(ctx, tr, rawURL, "/readyz")
	return err
}

// Whoami is Client.Whoami with only a TLS configuration.
func Whoami(ctx context.Context, rawURL string, tlsConfig *tls.Config) (string, error) {
	c := &Client{TLS: tlsConfig}
	return c.Whoami(ctx, rawURL)
}

// BalanceResult counts which server answered each of n requests.
type BalanceResult struct {
	// Counts maps server name to the number of requests it answered.
	Counts map[string]int `json:"counts"`
	// Requests is how many requests were made, Failures how many failed.
	Requests int `json:"requests"`
	Failures int `json:"failures"`
	// Errors counts failures by class (see Classify).
	Errors map[string]int `json:"errors,omitempty"`
	// FirstError is the first failure's message, for diagnosis.
	FirstError string `json:"first_error,omitempty"`
	// Elapsed is how long the whole run took.
	Elapsed time.Duration `json:"-"`
	// ElapsedMS is Elapsed in milliseconds (for JSON).
	ElapsedMS float64 `json:"elapsed_ms"`
}

// Balance makes n /whoami requests, each on a new TLS connection, with
// concurrency requests in flight, and counts the answers per server. It stops
// early when ctx is done (the rest count as not made). An error means the
// arguments were wrong; request failures are in the result.
func (c *Client) Balance(ctx context.Context, rawURL string, n, concurrency int) (BalanceResult, error) {
	res := BalanceResult{Counts: map[string]int{}, Errors: map[string]int{}}
	if n <= 0 {
		return res, errors.New("balance: n must be positive")
	}
	if concurrency <= 0 {
		concurrency = 1
	}
	if concurrency > n {
		concurrency = n
	}
	if _, err := endpoint(rawURL, "/whoami"); err != nil {
		return res, err
	}
	tr := c.transport()
	defer tr.CloseIdleConnections()

	start := time.Now()
	jobs := make(chan struct{})
	var mu sync.Mutex
	var wg sync.WaitGroup
	for range concurrency {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range jobs {
				body, err := c.get(ctx, tr, rawURL, "/whoami")
				mu.Lock()
				res.Requests++
				if err != nil {
					res.Failures++
					res.Errors[Classify(err)]++
					if res.FirstError == "" {
						res.FirstError = err.Error()
					}
				} else {
					res.Counts[strings.TrimSpace(body)]++
				}
				mu.Unlock()
			}
		}()
	}
feed:
	for range n {
		select {
		case jobs <- struct{}{}:
		case <-ctx.Done():
			break feed
		}
	}
	close(jobs)
	wg.Wait()
	res.Elapsed = time.Since(start)
	res.ElapsedMS = float64(res.Elapsed) / float64(time.Millisecond)
	if len(res.Errors) == 0 {
		res.Errors = nil
	}
	return res, nil
}

// Balance is Client.Balance with only a TLS configuration.
func Balance(ctx context.Context, rawURL string, n, concurrency int, tlsConfig *tls.Config) (BalanceResult, error) {
	c := &Client{TLS: tlsConfig}
	return c.Balance(ctx, rawURL, n, concurrency)
}

// Error classes returned by Classify.
const (
	ClassOK          = "ok"
	ClassReset       = "reset"       // ECONNRESET: the peer (or the LB) sent a RST
	ClassRefused     = "refused"     // ECONNREFUSED: RST in answer to the SYN
	ClassUnreachable = "unreachable" // EHOSTUNREACH / ENETUNREACH (e.g. no ARP answer)
	ClassTimeout     = "timeout"     // no answer in time
	ClassEOF         = "eof"         // the stream ended (FIN) where data was due
	ClassCanceled    = "canceled"    // we stopped it
	ClassTLS         = "tls"         // certificate or handshake failure
	ClassPipe        = "pipe"        // EPIPE: writing after the peer closed
	ClassError       = "error"       // anything else
)

// Classify names the kind of a network error, so reports can tell a reset
// stream from one that timed out or ended. HTTP status errors classify as
// "http-<code>".
func Classify(err error) string {
	if err == nil {
		return ClassOK
	}
	var se *StatusError
	switch {
	case errors.As(err, &se):
		return fmt.Sprintf("http-%d", se.Code)
	case errors.Is(err, syscall.ECONNRESET):
		return ClassReset
	case errors.Is(err, syscall.ECONNREFUSED):
		return ClassRefused
	case errors.Is(err, syscall.EHOSTUNREACH), errors.Is(err, syscall.ENETUNREACH):
		return ClassUnreachable
	case errors.Is(err, syscall.EPIPE):
		return ClassPipe
	case errors.Is(err, context.Canceled):
		return ClassCanceled
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return ClassEOF
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, os.ErrDeadlineExceeded):
		return ClassTimeout
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return ClassTimeout
	}
	var (
		verr  *tls.CertificateVerificationError
		alert tls.AlertError
		rhe   tls.RecordHeaderError
		uae   x509.UnknownAuthorityError
		hne   x509.HostnameError
	)
	if errors.As(err, &verr) || errors.As(err, &alert) || errors.As(err, &rhe) || errors.As(err, &uae) || errors.As(err, &hne) {
		return ClassTLS
	}
	if strings.Contains(err.Error(), "tls: ") {
		return ClassTLS
	}
	return ClassError
}
