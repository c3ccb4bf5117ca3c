package health

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"syscall"
	"time"

	"github.com/xdplb/xdplb/control/safefile"
)

// CheckKind names a health check, as the check key of the config says it.
type CheckKind string

const (
	// CheckTCP passes when the backend accepts a TCP connection.
	CheckTCP CheckKind = "tcp"
	// CheckTLS passes when the backend completes a TLS handshake. It is the
	// default: a hung API server still accepts TCP but never finishes TLS.
	CheckTLS CheckKind = "tls"
	// CheckHTTPS passes when an HTTPS GET of a path answers the expected
	// status, e.g. /readyz with 200.
	CheckHTTPS CheckKind = "https"
)

// Defaults of the HTTPS check.
const (
	DefaultCheckPath   = "/readyz"
	DefaultCheckStatus = http.StatusOK
)

// defaultCheckTimeout bounds a check whose context has no deadline, so that
// a caller's mistake cannot hang a check forever.
const defaultCheckTimeout = DefaultInter

// maxCheckBody is how much of an HTTPS answer is read: enough for /readyz's
// "ok" or a verbose report, never an unbounded body.
const maxCheckBody = 64 << 10

// maxTokenSize caps the bearer token file (a service account token is ~1 KiB).
const maxTokenSize = 64 << 10

// fileTimeout bounds each read of a credential file.
const fileTimeout = 2 * time.Second

// CheckOptions configures the checkers.
type CheckOptions struct {
	// SourceIP is the local address checks are sent from. It must be the
	// node's own address, never the VIP: only one LB holds the VIP, and
	// answers to it would be taken for translated flows. nil lets the
	// kernel choose.
	SourceIP net.IP
	// CAFile holds the PEM CA certificates the backend's certificate must
	// chain to. Empty: no verification, since K3s serves a certificate
	// signed by its own CA.
	CAFile string
	// ServerName is sent as SNI and, with CAFile, is the name the
	// certificate must be valid for. Empty: no SNI, and with CAFile the
	// chain is verified but not the name, since backends are checked by IP.
	ServerName string
	// CertFile and KeyFile are a PEM client certificate and its key, both
	// or neither.
	CertFile, KeyFile string
	// TokenFile holds a bearer token for the HTTPS check, read at every
	// check so that a rotated token is picked up.
	TokenFile string
	// Path is the HTTPS check's path, default DefaultCheckPath.
	Path string
	// ExpectStatus is the HTTPS check's expected status, default
	// DefaultCheckStatus.
	ExpectStatus int
}

// CheckError is a failed check: the step that failed ("tls handshake") and
// why. Its message is short, for the log line; Unwrap gives the full error.
type CheckError struct {
	Step string
	Err  error
}

func (e *CheckError) Error() string { return e.Step + ": " + shortError(e.Err) }

func (e *CheckError) Unwrap() error { return e.Err }

// NewChecker returns the checker of the given kind. It reads the CA,
// certificate and token files once, so that a wrong path fails at start
// rather than as a backend going down.
func NewChecker(kind CheckKind, opts CheckOptions) (Checker, error) {
	switch kind {
	case CheckTCP:
		return &TCPChecker{SourceIP: opts.SourceIP}, nil
	case CheckTLS:
		return NewTLSChecker(opts)
	case CheckHTTPS:
		return NewHTTPSChecker(opts)
	default:
		return nil, fmt.Errorf("unknown check %q: use tcp, tls or https", kind)
	}
}

// TCPChecker passes when the backend accepts a TCP connection.
type TCPChecker struct {
	SourceIP net.IP
}

func (c *TCPChecker) String() string { return "tcp connect" }

// Check connects to addr and closes the connection.
func (c *TCPChecker) Check(ctx context.Context, addr string) error {
	ctx, cancel := withDefaultTimeout(ctx)
	defer cancel()
	conn, err := dial(ctx, c.SourceIP, addr)
	if err != nil {
		return &CheckError{Step: c.String(), Err: err}
	}
	conn.Close()
	return nil
}

// TLSChecker passes when the backend completes a TLS handshake.
type TLSChecker struct {
	opts CheckOptions
}

// NewTLSChecker returns a TLSChecker after checking that its files load.
func NewTLSChecker(opts CheckOptions) (*TLSChecker, error) {
	if _, err := loadTLSConfig(opts); err != nil {
		return nil, err
	}
	return &TLSChecker{opts: opts}, nil
}

func (c *TLSChecker) String() string { return "tls handshake" }

// Check connects to addr and completes a TLS handshake.
func (c *TLSChecker) Check(ctx context.Context, addr string) error {
	ctx, cancel := withDefaultTimeout(ctx)
	defer cancel()
	conn, err := handshake(ctx, c.opts, addr)
	if err != nil {
		return &CheckError{Step: c.String(), Err: err}
	}
	conn.Close()
	return nil
}

// HTTPSChecker passes when a GET of a path answers the expected status.
type HTTPSChecker struct {
	opts CheckOptions
}

// NewHTTPSChecker returns an HTTPSChecker after checking that its files load.
func NewHTTPSChecker(opts CheckOptions) (*HTTPSChecker, error) {
	if opts.Path == "" {
		opts.Path = DefaultCheckPath
	}
	if !strings.HasPrefix(opts.Path, "/") {
		return nil, fmt.Errorf("check path %q: must start with /", opts.Path)
	}
	if opts.ExpectStatus == 0 {
		opts.ExpectStatus = DefaultCheckStatus
	}
	if _, err := loadTLSConfig(opts); err != nil {
		return nil, err
	}
	if opts.TokenFile != "" {
		if _, err := readToken(opts.TokenFile); err != nil {
			return nil, err
		}
	}
	return &HTTPSChecker{opts: opts}, nil
}

func (c *HTTPSChecker) String() string { return "https GET " + c.opts.Path }

// Check connects to addr, completes a TLS handshake, sends GET Path over
// HTTP/1.1 and compares the status with ExpectStatus. Each check uses a
// fresh connection, as HAProxy's do: a kept-alive one would hide a backend
// that no longer accepts connections.
func (c *HTTPSChecker) Check(ctx context.Context, addr string) error {
	ctx, cancel := withDefaultTimeout(ctx)
	defer cancel()
	if err := c.get(ctx, addr); err != nil {
		return &CheckError{Step: c.String(), Err: err}
	}
	return nil
}

func (c *HTTPSChecker) get(ctx context.Context, addr string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "https://"+addr+c.opts.Path, nil)
	if err != nil {
		return err
	}
	if c.opts.ServerName != "" {
		req.Host = c.opts.ServerName
	}
	req.Header.Set("User-Agent", "xdplb-health-check")
	req.Close = true
	if c.opts.TokenFile != "" {
		token, err := readToken(c.opts.TokenFile)
		if err != nil {
			return &LocalError{Reason: "cannot read the check's token", Err: err}
		}
		req.Header.Set("Authorization", "Bearer "+token)
	}

	conn, err := handshake(ctx, c.opts, addr)
	if err != nil {
		return err
	}
	defer conn.Close()
	// The deadline comes from ctx; AfterFunc also ends the exchange if ctx
	// is cancelled (the Monitor stopping).
	if deadline, ok := ctx.Deadline(); ok {
		conn.SetDeadline(deadline)
	}
	stop := context.AfterFunc(ctx, func() { conn.SetDeadline(time.Unix(1, 0)) })
	defer stop()

	if err := req.Write(conn); err != nil {
		return err
	}
	resp, err := http.ReadResponse(bufio.NewReader(conn), req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	io.Copy(io.Discard, io.LimitReader(resp.Body, maxCheckBody))
	if resp.StatusCode != c.opts.ExpectStatus {
		return &StatusError{Code: resp.StatusCode}
	}
	return nil
}

// StatusError is an https check answered with the wrong status: the server
// is alive but says it is not ready (K3s /readyz 503 while it starts or
// loses etcd). The daemon drains such a backend (no new flows) instead of
// cutting its established connections.
type StatusError struct{ Code int }

func (e *StatusError) Error() string { return fmt.Sprintf("status %d", e.Code) }

// IsNotReady reports whether err came from a server that answered but
// was not ready (see StatusError).
func IsNotReady(err error) bool {
	var se *StatusError
	return errors.As(err, &se)
}

// handshake dials addr and completes a TLS handshake under ctx.
func handshake(ctx context.Context, opts CheckOptions, addr string) (*tls.Conn, error) {
	cfg, err := loadTLSConfig(opts)
	if err != nil {
		return nil, &LocalError{Reason: "cannot read the check's credentials", Err: err}
	}
	raw, err := dial(ctx, opts.SourceIP, addr)
	if err != nil {
		return nil, err
	}
	conn := tls.Client(raw, cfg)
	if err := conn.HandshakeContext(ctx); err != nil {
		raw.Close()
		return nil, err
	}
	return conn, nil
}

func dial(ctx context.Context, source net.IP, addr string) (net.Conn, error) {
	var d net.Dialer
	if source != nil {
		d.LocalAddr = &net.TCPAddr{IP: source}
	}
	return d.DialContext(ctx, "tcp", addr)
}

// loadTLSConfig reads the CA and client certificate files and returns the
// TLS configuration of one check. It runs at every check, so that
// certificates rotated on disk are picked up without a restart; the files
// are small and checks are seconds apart.
func loadTLSConfig(opts CheckOptions) (*tls.Config, error) {
	cfg := &tls.Config{
		MinVersion: tls.VersionTLS12,
		ServerName: opts.ServerName,
		NextProtos: []string{"http/1.1"},
	}
	if (opts.CertFile == "") != (opts.KeyFile == "") {
		return nil, errors.New("client certificate: set both the certificate and the key file, or neither")
	}
	if opts.CertFile != "" {
		certPEM, err := safefile.Read(opts.CertFile, safefile.MaxSize, fileTimeout)
		if err != nil {
			return nil, fmt.Errorf("read client certificate: %w", err)
		}
		keyPEM, err := safefile.Read(opts.KeyFile, safefile.MaxSize, fileTimeout)
		if err != nil {
			return nil, fmt.Errorf("read client key: %w", err)
		}
		cert, err := tls.X509KeyPair(certPEM, keyPEM)
		if err != nil {
			return nil, fmt.Errorf("load client certificate %s with key %s: %w", opts.CertFile, opts.KeyFile, err)
		}
		cfg.Certificates = []tls.Certificate{cert}
	}
	if opts.CAFile == "" {
		// K3s serves a certificate of its own CA; without that CA the check
		// can only show that the backend speaks TLS.
		cfg.InsecureSkipVerify = true
		return cfg, nil
	}
	pem, err := safefile.Read(opts.CAFile, safefile.MaxSize, fileTimeout)
	if err != nil {
		return nil, fmt.Errorf("read CA file: %w", err)
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("CA file %s: no PEM certificate found", opts.CAFile)
	}
	cfg.RootCAs = roots
	if opts.ServerName == "" {
		// Backends are checked by IP, which the certificate may not list:
		// verify the chain, not the name.
		cfg.InsecureSkipVerify = true
		cfg.VerifyConnection = verifyChain(roots)
	}
	return cfg, nil
}

// verifyChain verifies the peer's certificate chain against roots without
// checking any name.
func verifyChain(roots *x509.CertPool) func(tls.ConnectionState) error {
	return func(cs tls.ConnectionState) error {
		if len(cs.PeerCertificates) == 0 {
			return errors.New("server sent no certificate")
		}
		inter := x509.NewCertPool()
		for _, c := range cs.PeerCertificates[1:] {
			inter.AddCert(c)
		}
		_, err := cs.PeerCertificates[0].Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter})
		return err
	}
}

func readToken(path string) (string, error) {
	b, err := safefile.Read(path, maxTokenSize, fileTimeout)
	if err != nil {
		return "", fmt.Errorf("read token file: %w", err)
	}
	token := strings.TrimSpace(string(b))
	if token == "" {
		return "", fmt.Errorf("token file %s is empty", path)
	}
	return token, nil
}

func withDefaultTimeout(ctx context.Context) (context.Context, context.CancelFunc) {
	if _, ok := ctx.Deadline(); ok {
		return context.WithCancel(ctx)
	}
	return context.WithTimeout(ctx, defaultCheckTimeout)
}

// shortError renders err for a log line: "connection refused" rather than
// "dial tcp 10.10.10.51:6443: connect: connection refused", whose address
// the line already names.
func shortError(err error) string {
	var (
		errno   syscall.Errno
		verify  *tls.CertificateVerificationError
		netErr  net.Error
		opErr   *net.OpError
		pathErr *os.PathError
	)
	switch {
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, os.ErrDeadlineExceeded),
		errors.As(err, &netErr) && netErr.Timeout():
		return "i/o timeout"
	case errors.Is(err, context.Canceled):
		return "canceled"
	case errors.As(err, &verify):
		return verify.Err.Error() // "x509: certificate signed by unknown authority"
	case errors.As(err, &pathErr):
		return err.Error() // "read token file: open /x: no such file or directory"
	case errors.As(err, &errno):
		return errno.Error() // "connection refused"
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return "connection closed by backend"
	case errors.As(err, &opErr) && opErr.Op == "remote error":
		return err.Error() // "remote error: tls: certificate required"
	case errors.As(err, &opErr):
		return opErr.Err.Error()
	default:
		return err.Error()
	}
}
