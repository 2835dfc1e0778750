package audit

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"path"
	"strings"
	"time"

	vault "github.com/hashicorp/vault/api"
)

// VaultConfig says where records go.
type VaultConfig struct {
	Address string
	// Token authenticates the daemon; read from a file or the environment.
	Token string
	// Mount is a KV version 2 mount; Prefix the folder under it.
	Mount  string
	Prefix string
	// Timeout bounds one commit; past it the commit fails closed.
	Timeout time.Duration
}

func (c VaultConfig) withDefaults() VaultConfig {
	if c.Mount == "" {
		c.Mount = "secret"
	}
	if c.Prefix == "" {
		c.Prefix = "escrowd/audit"
	}
	if c.Timeout <= 0 {
		c.Timeout = 5 * time.Second
	}
	return c
}

// Vault commits each record as one KV v2 secret, path Prefix/records/ID.
// Vault's own audit devices then record the write, so the trail exists in
// two places.
type Vault struct {
	cfg VaultConfig
	kv  *vault.KVv2
	sys *vault.Sys
}

var _ Sink = (*Vault)(nil)

// NewVault makes a client; it does not contact Vault.
func NewVault(cfg VaultConfig) (*Vault, error) {
	cfg = cfg.withDefaults()
	if cfg.Address == "" {
		return nil, errors.New("audit: no Vault address")
	}
	if cfg.Token == "" {
		return nil, errors.New("audit: no Vault token")
	}
	vc := vault.DefaultConfig()
	vc.Address = cfg.Address
	vc.Timeout = cfg.Timeout
	// The commit deadline is ours; retries inside it would hide outages.
	vc.MaxRetries = 0
	c, err := vault.NewClient(vc)
	if err != nil {
		return nil, fmt.Errorf("audit: failed to make a Vault client: %w", err)
	}
	c.SetToken(cfg.Token)
	return &Vault{cfg: cfg, kv: c.KVv2(cfg.Mount), sys: c.Sys()}, nil
}

// Commit writes r. Any failure wraps ErrUnavailable.
func (v *Vault) Commit(ctx context.Context, r *Record) error {
	ctx, cancel := context.WithTimeout(ctx, v.cfg.Timeout)
	defer cancel()
	data, err := toMap(r)
	if err != nil {
		return fmt.Errorf("%w: %v", ErrUnavailable, err)
	}
	if _, err := v.kv.Put(ctx, v.recordPath(r.ID), data); err != nil {
		return fmt.Errorf("%w: failed to write record %s to Vault: %v", ErrUnavailable, r.ID, redactVaultError(err))
	}
	return nil
}

// Read returns the record with the given id.
func (v *Vault) Read(ctx context.Context, id string) (*Record, error) {
	s, err := v.kv.Get(ctx, v.recordPath(id))
	if err != nil {
		return nil, fmt.Errorf("audit: failed to read record %s: %w", id, err)
	}
	b, err := json.Marshal(s.Data)
	if err != nil {
		return nil, err
	}
	var r Record
	if err := json.Unmarshal(b, &r); err != nil {
		return nil, fmt.Errorf("audit: record %s: %w", id, err)
	}
	return &r, nil
}

// Healthy reports whether Vault is unsealed and answering.
func (v *Vault) Healthy(ctx context.Context) error {
	h, err := v.sys.HealthWithContext(ctx)
	if err != nil {
		return fmt.Errorf("%w: %v", ErrUnavailable, redactVaultError(err))
	}
	if h.Sealed || !h.Initialized {
		return fmt.Errorf("%w: Vault is sealed or not initialised", ErrUnavailable)
	}
	return nil
}

func (v *Vault) recordPath(id string) string {
	return path.Join(v.cfg.Prefix, "records", id)
}

func toMap(r *Record) (map[string]any, error) {
	b, err := json.Marshal(r)
	if err != nil {
		return nil, err
	}
	var m map[string]any
	err = json.Unmarshal(b, &m)
	return m, err
}

// redactVaultError keeps an error's first line: Vault's client errors can
// echo the request URL, never the token, but the body they quote is ours
// and stays out of logs on principle.
func redactVaultError(err error) string {
	s := err.Error()
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		s = s[:i]
	}
	return s
}
