// Package client is how Go programs call escrowd: it dials with mutual TLS,
// retries the calls that are safe to repeat, and turns the daemon's status
// details into typed errors.
//
// Every RPC of the API has a method here with the API's request and
// response messages. A method is either idempotent — repeating it changes
// nothing the first call did not (reads, MarkUnlockCodeConsumed,
// SetMinDecryptionVersion, and the re-wraps, which only compute a new
// slot) — or not (anything that makes keys, epochs, reveals, approvals or
// jobs). Only idempotent methods are retried, on UNAVAILABLE and ABORTED,
// with exponential backoff and jitter, honouring the daemon's RetryInfo,
// within Config.RetryDeadline. A call that is not idempotent is sent once:
// an UNAVAILABLE reply may come after the daemon did the work (the audit
// trail could not record it, for example), and only the caller knows
// whether doing it twice is acceptable. Idempotent reports which is which.
//
// gRPC types stay inside this package: errors are *Error values with a
// Code of this package and sentinels for errors.Is.
package client

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"

	escrowdv1 "github.com/escrowd/escrowd/api/escrowd/v1"
)

// DefaultRetryDeadline bounds the retries of an idempotent call whose
// context has no deadline of its own.
const DefaultRetryDeadline = 30 * time.Second

// Config says where escrowd is and who the caller is.
type Config struct {
	// Addr is escrowd's host:port.
	Addr string
	// CertFile and KeyFile hold the caller's certificate and key (PEM);
	// CAFile the CA that signs escrowd's certificate. They are read once,
	// by Dial.
	CertFile, KeyFile, CAFile string
	// TLS, if set, is used instead of the three files: for a certificate
	// that rotates, such as a SPIFFE SVID from the Workload API
	// (go-spiffe's tlsconfig.MTLSClientConfig gives one). It must present
	// a client certificate.
	TLS *tls.Config
	// MaxAttempts bounds the tries of an idempotent call (default 5);
	// 1 turns retries off.
	MaxAttempts int
	// RetryDeadline bounds all the tries of an idempotent call whose
	// context has no deadline (default DefaultRetryDeadline).
	RetryDeadline time.Duration
	// BaseDelay and MaxDelay shape the backoff: the n-th retry waits a
	// random time up to min(MaxDelay, BaseDelay·2ⁿ) (defaults 100 ms and
	// 5 s), or what the daemon's RetryInfo asks if that is longer.
	BaseDelay, MaxDelay time.Duration
	// DialOptions are added to the gRPC connection's (tracing, for one).
	// They are gRPC types, for programs that know gRPC.
	DialOptions []grpc.DialOption
}

// Client is a connection to escrowd. It is safe for concurrent use.
type Client struct {
	conn     *grpc.ClientConn
	sync     escrowdv1.SyncServiceClient
	support  escrowdv1.SupportServiceClient
	security escrowdv1.SecurityServiceClient
	cfg      Config
	sleep    func(context.Context, time.Duration) error
}

// Dial checks cfg, loads its certificates and makes a client. It does not
// wait for a connection: the first call makes one, and a daemon that is
// down is an ErrUnavailable of that call.
func Dial(ctx context.Context, cfg Config) (*Client, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if cfg.Addr == "" {
		return nil, errors.New("client: no escrowd address")
	}
	tc := cfg.TLS
	if tc == nil {
		var err error
		if tc, err = LoadTLS(cfg.CertFile, cfg.KeyFile, cfg.CAFile); err != nil {
			return nil, err
		}
	}
	if cfg.MaxAttempts <= 0 {
		cfg.MaxAttempts = 5
	}
	if cfg.RetryDeadline <= 0 {
		cfg.RetryDeadline = DefaultRetryDeadline
	}
	if cfg.BaseDelay <= 0 {
		cfg.BaseDelay = 100 * time.Millisecond
	}
	if cfg.MaxDelay <= 0 {
		cfg.MaxDelay = 5 * time.Second
	}
	opts := append([]grpc.DialOption{grpc.WithTransportCredentials(credentials.NewTLS(tc))}, cfg.DialOptions...)
	conn, err := grpc.NewClient(cfg.Addr, opts...)
	if err != nil {
		return nil, fmt.Errorf("client: failed to set up a connection to %s: %w", cfg.Addr, err)
	}
	return &Client{
		conn:     conn,
		sync:     escrowdv1.NewSyncServiceClient(conn),
		support:  escrowdv1.NewSupportServiceClient(conn),
		security: escrowdv1.NewSecurityServiceClient(conn),
		cfg:      cfg,
		sleep:    sleepCtx,
	}, nil
}

// Close closes the connection.
func (c *Client) Close() error { return c.conn.Close() }

// LoadTLS makes a mutual TLS configuration from PEM files: the caller's
// certificate and key, and the CA that signs escrowd's certificate.
func LoadTLS(certFile, keyFile, caFile string) (*tls.Config, error) {
	if certFile == "" || keyFile == "" || caFile == "" {
		return nil, errors.New("client: a client certificate is required: its certificate, key and CA files")
	}
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return nil, fmt.Errorf("client: failed to load the client certificate: %w", err)
	}
	caPEM, err := os.ReadFile(caFile)
	if err != nil {
		return nil, fmt.Errorf("client: failed to read the CA: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		return nil, fmt.Errorf("client: %s holds no PEM certificate", caFile)
	}
	return &tls.Config{Certificates: []tls.Certificate{cert}, RootCAs: pool, MinVersion: tls.VersionTLS13}, nil
}

// A CallOption changes one call.
type CallOption func(*callOptions)

type callOptions struct {
	requestID *string
	attempts  *int
}

// RequestID stores the request id escrowd gave the call (its audit
// record's id) in *id, whether the call succeeded or not; "" if none came.
func RequestID(id *string) CallOption {
	return func(o *callOptions) { o.requestID = id }
}

// Attempts stores how many times the call was sent in *n.
func Attempts(n *int) CallOption {
	return func(o *callOptions) { o.attempts = n }
}

const headerRequestID = "x-request-id"

func requestIDOf(md metadata.MD) string {
	if v := md.Get(headerRequestID); len(v) > 0 {
		return v[0]
	}
	return ""
}
