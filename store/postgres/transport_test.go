package postgres

import (
	"context"
	"errors"
	"testing"
	"time"
)

// TestRemoteNeedsVerifyFull: a store URL that reaches a database away from
// loopback or a Unix socket is refused before any connection unless it
// verifies the server's certificate and name (sslmode=verify-full). Before
// the check, every one of these connected (or tried to) in clear or to an
// unverified server.
func TestRemoteNeedsVerifyFull(t *testing.T) {
	for _, tc := range []struct {
		url  string
		safe bool
	}{
		{"postgres://escrowd@db.example.com/escrowd?sslmode=disable", false},
		{"postgres://escrowd@db.example.com/escrowd?sslmode=allow", false},
		{"postgres://escrowd@db.example.com/escrowd?sslmode=prefer", false},
		{"postgres://escrowd@db.example.com/escrowd", false}, // libpq's default is prefer
		{"postgres://escrowd@db.example.com/escrowd?sslmode=require", false},
		{"postgres://escrowd@db.example.com/escrowd?sslmode=verify-ca", false},
		{"postgres://escrowd@10.0.0.5/escrowd?sslmode=require", false},
		{"host=db.example.com user=escrowd sslmode=require", false},
		{"postgres://escrowd@127.0.0.1,db.example.com/escrowd?sslmode=disable", false}, // a remote fallback
		{"postgres://escrowd@db.example.com/escrowd?sslmode=verify-full", true},
		{"postgres://escrowd@127.0.0.1/escrowd?sslmode=disable", true},
		{"postgres://escrowd@[::1]/escrowd?sslmode=disable", true},
		{"postgres://escrowd@localhost/escrowd?sslmode=disable", true},
		{"host=/var/run/postgresql user=escrowd", true},
	} {
		t.Run(tc.url, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			defer cancel()
			st, err := Open(ctx, tc.url)
			if st != nil {
				st.Close()
			}
			if got := errors.Is(err, ErrInsecureTransport); got == tc.safe {
				t.Fatalf("Open = %v; want refused as insecure: %v", err, !tc.safe)
			}
		})
	}
}
