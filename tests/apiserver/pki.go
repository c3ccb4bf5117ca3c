package apiserver

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"time"
)

// DefaultSANs are put into every server certificate IssueServer makes: the
// names a K3s server answers to in the guide's network (the VIP, both LB
// addresses for the single-LB setup, loopback and the in-cluster names).
var DefaultSANs = []string{
	"localhost", "127.0.0.1",
	"10.10.10.100",               // VIP
	"10.10.10.98", "10.10.10.99", // lb-1, lb-2 (single-LB setup)
	"kubernetes", "kubernetes.default", "kubernetes.default.svc",
}

// CA is a throw-away certificate authority for tests (ECDSA P-256).
type CA struct {
	Cert    *x509.Certificate
	Key     crypto.Signer
	CertPEM []byte
	KeyPEM  []byte
}

// KeyPair is a certificate issued by a CA, with its key.
type KeyPair struct {
	CertPEM []byte
	KeyPEM  []byte
	// TLS is ready for tls.Config.Certificates.
	TLS tls.Certificate
}

// NewCA creates a CA valid for a day.
func NewCA() (*CA, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generate CA key: %w", err)
	}
	serial, err := newSerial()
	if err != nil {
		return nil, err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: "xdplb-test-ca", Organization: []string{"xdplb tests"}},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(24 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return nil, fmt.Errorf("create CA certificate: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	keyPEM, err := encodeKey(key)
	if err != nil {
		return nil, err
	}
	return &CA{
		Cert:    cert,
		Key:     key,
		CertPEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		KeyPEM:  keyPEM,
	}, nil
}

// LoadCA reads a CA written by WriteFiles (ca.crt, ca.key), to issue more
// certificates under it.
func LoadCA(certFile, keyFile string) (*CA, error) {
	pair, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return nil, fmt.Errorf("load CA: %w", err)
	}
	cert, err := x509.ParseCertificate(pair.Certificate[0])
	if err != nil {
		return nil, fmt.Errorf("load CA: %w", err)
	}
	if !cert.IsCA {
		return nil, fmt.Errorf("load CA: %s is not a CA certificate", certFile)
	}
	signer, ok := pair.PrivateKey.(crypto.Signer)
	if !ok {
		return nil, fmt.Errorf("load CA: key in %s cannot sign", keyFile)
	}
	certPEM, err := os.ReadFile(certFile)
	if err != nil {
		return nil, err
	}
	keyPEM, err := os.ReadFile(keyFile)
	if err != nil {
		return nil, err
	}
	return &CA{Cert: cert, Key: signer, CertPEM: certPEM, KeyPEM: keyPEM}, nil
}

// Pool returns a cert pool holding only this CA, for RootCAs or ClientCAs.
func (ca *CA) Pool() *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(ca.Cert)
	return p
}

// Issue makes a certificate for names, each a DNS name or an IP address that
// goes into the subject alternative names; the first one is also the common
// name. The certificate is valid for both server and client authentication.
func (ca *CA) Issue(names ...string) (*KeyPair, error) {
	if len(names) == 0 {
		return nil, errors.New("issue certificate: no names")
	}
	return ca.issue(names[0], names, []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth})
}

// IssueServer makes a server certificate for a K3s server: its name, its
// addresses and DefaultSANs (VIP, LB addresses, loopback).
func (ca *CA) IssueServer(name string, addrs ...string) (*KeyPair, error) {
	names := append([]string{name}, addrs...)
	names = append(names, DefaultSANs...)
	return ca.issue(name, dedupe(names), []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth})
}

// IssueClient makes a client certificate with common name cn (like K3s's
// "system:node:agent-1"), for servers started with a client CA.
func (ca *CA) IssueClient(cn string) (*KeyPair, error) {
	return ca.issue(cn, nil, []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth})
}

func (ca *CA) issue(cn string, names []string, usage []x509.ExtKeyUsage) (*KeyPair, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generate key: %w", err)
	}
	serial, err := newSerial()
	if err != nil {
		return nil, err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: cn, Organization: []string{"xdplb tests"}},
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     now.Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  usage,
	}
	for _, n := range names {
		if ip := net.ParseIP(n); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else {
			tmpl.DNSNames = append(tmpl.DNSNames, n)
		}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, key.Public(), ca.Key)
	if err != nil {
		return nil, fmt.Errorf("issue certificate for %s: %w", cn, err)
	}
	kp := &KeyPair{CertPEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})}
	if kp.KeyPEM, err = encodeKey(key); err != nil {
		return nil, err
	}
	if kp.TLS, err = tls.X509KeyPair(kp.CertPEM, kp.KeyPEM); err != nil {
		return nil, err
	}
	return kp, nil
}

// WriteFiles writes the CA to dir as ca.crt and ca.key.
func (ca *CA) WriteFiles(dir string) (certFile, keyFile string, err error) {
	return writePair(dir, "ca", ca.CertPEM, ca.KeyPEM)
}

// WriteFiles writes the pair to dir as <base>.crt and <base>.key (mode 0600).
func (kp *KeyPair) WriteFiles(dir, base string) (certFile, keyFile string, err error) {
	return writePair(dir, base, kp.CertPEM, kp.KeyPEM)
}

func writePair(dir, base string, certPEM, keyPEM []byte) (string, string, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", "", err
	}
	certFile := filepath.Join(dir, base+".crt")
	keyFile := filepath.Join(dir, base+".key")
	if err := os.WriteFile(certFile, certPEM, 0o644); err != nil {
		return "", "", err
	}
	if err := os.WriteFile(keyFile, keyPEM, 0o600); err != nil {
		return "", "", err
	}
	return certFile, keyFile, nil
}

// PKI is the set of files a test network needs, as written by WritePKI.
type PKI struct {
	Dir        string
	CA         *CA
	CAFile     string // ca.crt: --ca for agents, --ca (client CA) for mockapi
	ServerCert string // server.crt: valid for every server, the VIP and the LBs
	ServerKey  string // server.key
	ClientCert string // client.crt (CN system:node:agent)
	ClientKey  string // client.key
	Token      string // bearer token, also in token
	TokenFile  string
}

// WritePKI creates a CA, one server certificate valid for DefaultSANs plus
// serverNames (e.g. "server-1", "10.10.10.50", ...), a client certificate and
// a random bearer token, and writes them to dir.
func WritePKI(dir string, serverNames ...string) (*PKI, error) {
	ca, err := NewCA()
	if err != nil {
		return nil, err
	}
	p := &PKI{Dir: dir, CA: ca}
	if p.CAFile, _, err = ca.WriteFiles(dir); err != nil {
		return nil, err
	}
	srv, err := ca.IssueServer("k3s-server", serverNames...)
	if err != nil {
		return nil, err
	}
	if p.ServerCert, p.ServerKey, err = srv.WriteFiles(dir, "server"); err != nil {
		return nil, err
	}
	cli, err := ca.IssueClient("system:node:agent")
	if err != nil {
		return nil, err
	}
	if p.ClientCert, p.ClientKey, err = cli.WriteFiles(dir, "client"); err != nil {
		return nil, err
	}
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		return nil, err
	}
	p.Token = fmt.Sprintf("K10%x", b)
	p.TokenFile = filepath.Join(dir, "token")
	if err := os.WriteFile(p.TokenFile, []byte(p.Token+"\n"), 0o600); err != nil {
		return nil, err
	}
	return p, nil
}

func encodeKey(key *ecdsa.PrivateKey) ([]byte, error) {
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, fmt.Errorf("marshal key: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), nil
}

func newSerial() (*big.Int, error) {
	s, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return nil, fmt.Errorf("serial number: %w", err)
	}
	return s, nil
}

func dedupe(in []string) []string {
	seen := map[string]bool{}
	var out []string
	for _, s := range in {
		if !seen[s] {
			seen[s] = true
			out = append(out, s)
		}
	}
	return out
}
