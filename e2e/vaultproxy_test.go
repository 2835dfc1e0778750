package e2e

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"
)

// vaultProxy stands between escrowd and the real Vault server and
// forwards every call, except the writes of audit batches it is told to
// stop: it fails them (as a Vault that errors would) or holds them (as a
// Vault that stalls would), so that a test can put escrowd between two
// records of one request without timing luck.
type vaultProxy struct {
	URL string

	mu sync.Mutex
	// match picks the batch writes to stop, by their records (the JSON
	// array the batch's "records" field holds); nil: none.
	match func(records string) bool
	hold  bool // hold the matching writes, else fail them
	// held receives the records of each write as it is held or failed.
	held chan string
}

func newVaultProxy(t *testing.T) *vaultProxy {
	t.Helper()
	target, err := url.Parse(vaultSrv.Addr)
	if err != nil {
		t.Fatal(err)
	}
	p := &vaultProxy{held: make(chan string, 64)}
	rp := httputil.NewSingleHostReverseProxy(target)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if (r.Method == http.MethodPut || r.Method == http.MethodPost) && strings.Contains(r.URL.Path, "/chain/") {
			body, err := io.ReadAll(r.Body)
			if err != nil {
				http.Error(w, err.Error(), http.StatusBadGateway)
				return
			}
			r.Body = io.NopCloser(bytes.NewReader(body))
			var put struct {
				Data struct {
					Records string `json:"records"`
				} `json:"data"`
			}
			_ = json.Unmarshal(body, &put)
			p.mu.Lock()
			match, hold := p.match, p.hold
			p.mu.Unlock()
			if match != nil && match(put.Data.Records) {
				p.held <- put.Data.Records
				if hold {
					// Until the writer is gone (its process killed) or the
					// test ends.
					select {
					case <-r.Context().Done():
					case <-time.After(2 * time.Minute):
					}
					return
				}
				http.Error(w, `{"errors":["stopped by the test's proxy"]}`, http.StatusServiceUnavailable)
				return
			}
		}
		rp.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	p.URL = srv.URL
	return p
}

// stop makes the proxy fail (hold false) or hold (hold true) every batch
// write whose records match; match nil forwards everything again.
func (p *vaultProxy) stop(match func(records string) bool, hold bool) {
	p.mu.Lock()
	p.match, p.hold = match, hold
	p.mu.Unlock()
}

// awaitStopped waits for a stopped write and returns its records.
func (p *vaultProxy) awaitStopped(t *testing.T) string {
	t.Helper()
	select {
	case r := <-p.held:
		return r
	case <-time.After(30 * time.Second):
		t.Fatal("no audit write was stopped within 30 s")
		return ""
	}
}

// outcomeOf matches a batch holding the outcome record of an operation.
func outcomeOf(op string) func(string) bool {
	return func(records string) bool {
		var recs []struct {
			Operation string `json:"operation"`
			Phase     string `json:"phase"`
		}
		if json.Unmarshal([]byte(records), &recs) != nil {
			return false
		}
		for _, r := range recs {
			if strings.HasSuffix(r.Operation, "/"+op) && r.Phase == "outcome" {
				return true
			}
		}
		return false
	}
}
