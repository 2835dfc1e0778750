// Package pgtest gives each test its own database on a real PostgreSQL
// server: created on demand, dropped when the test ends. A server that does
// not answer fails the test; it never skips it (`make deps` starts one).
package pgtest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net/url"
	"os"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// EnvURL names the variable holding the admin connection URL; the default
// is DefaultURL (trust authentication on the loopback, as `make deps` sets
// up).
const EnvURL = "ESCROWD_PG_URL"

// DefaultURL is the admin URL when $ESCROWD_PG_URL is unset.
const DefaultURL = "postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable"

// AdminURL returns the admin connection URL.
func AdminURL() string {
	if u := os.Getenv(EnvURL); u != "" {
		return u
	}
	return DefaultURL
}

// New creates an empty database and returns its URL; the database is
// dropped (its connections cut) when tb ends.
func New(tb testing.TB) string {
	tb.Helper()
	u, drop, err := Create(context.Background())
	if err != nil {
		tb.Fatalf("pgtest: %v", err)
	}
	tb.Cleanup(func() {
		if err := drop(); err != nil {
			tb.Errorf("pgtest: %v", err)
		}
	})
	return u
}

// Create creates an empty database; drop removes it.
func Create(ctx context.Context) (dbURL string, drop func() error, err error) {
	admin := AdminURL()
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, admin)
	if err != nil {
		return "", nil, fmt.Errorf("PostgreSQL at %s does not answer (run `make deps`): %w", admin, err)
	}
	defer conn.Close(context.Background())
	var b [6]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", nil, err
	}
	name := "escrowd_test_" + hex.EncodeToString(b[:])
	if _, err := conn.Exec(ctx, "CREATE DATABASE "+name); err != nil {
		return "", nil, fmt.Errorf("create database %s: %w", name, err)
	}
	pu, err := url.Parse(admin)
	if err != nil {
		return "", nil, err
	}
	pu.Path = "/" + name
	drop = func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		c, err := pgx.Connect(ctx, admin)
		if err != nil {
			return err
		}
		defer c.Close(context.Background())
		_, err = c.Exec(ctx, "DROP DATABASE IF EXISTS "+name+" WITH (FORCE)")
		return err
	}
	return pu.String(), drop, nil
}
