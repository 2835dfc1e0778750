// Command auditcost measures what one audit write costs the Vault server,
// in CPU, against the number of records it carries: it starts the real
// Vault dev server (tools/vaultdev, file storage and the file audit device,
// as the tests and the benchmark run it), writes batches of N reveal-sized
// records the way audit.Vault does (KV v2 put, check-and-set 0, the records
// as one JSON string) for a few seconds per N, and prints Vault's CPU per
// write and per record from /proc/PID/stat. With "noaudit" it first
// disables Vault's file audit device, to show that device's share. Run
// from the repository root:
//
//	go run ./tools/auditcost [SECONDS] [noaudit] [sizes=1,16,256] [profile=DIR]
//
// With profile=DIR it also takes a CPU profile of Vault (its
// /v1/sys/pprof/profile endpoint) over each size's writes, to
// DIR/vault-N.pprof (read with `go tool pprof -top .cache/bin/vaultdev
// DIR/vault-1.pprof`).
// docs/BENCHMARKS.md ("The audit path") gives the figures.
package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	vault "github.com/hashicorp/vault/api"

	"github.com/escrowd/escrowd/audit"
	"github.com/escrowd/escrowd/internal/vaulttest"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "auditcost:", err)
		os.Exit(1)
	}
}

// record is a reveal's outcome record as the daemon fills it (sizes of
// the real fields; no value is secret).
func record(i int) *audit.Record {
	return &audit.Record{
		ID: audit.NewID(time.Now()), Time: time.Now().UTC(),
		Caller: "support:CN=support-1,O=escrowd-bench", Operation: "/escrowd.v1.SupportService/RevealUnlockCode",
		Phase: audit.PhaseOutcome, Group: "bench-g0000123", User: fmt.Sprintf("bench-u%05d", i), Ticket: "INC-000123",
		Outcome: audit.OutcomeOK, Code: "OK", KeyVersions: []string{"unlock:1"}, Detail: []string{"index:3"},
	}
}

func run() error {
	secs := 3.0
	noAudit := false
	sizes := []int{1, 2, 4, 8, 16, 32, 64, 128, 256}
	profDir := ""
	for _, a := range os.Args[1:] {
		if a == "noaudit" {
			noAudit = true
		} else if v, ok := strings.CutPrefix(a, "profile="); ok {
			profDir = v
		} else if v, ok := strings.CutPrefix(a, "sizes="); ok {
			sizes = nil
			for _, f := range strings.Split(v, ",") {
				n, err := strconv.Atoi(f)
				if err != nil || n < 1 {
					return fmt.Errorf("sizes=%s: not a list of positive numbers", v)
				}
				sizes = append(sizes, n)
			}
		} else if f, err := strconv.ParseFloat(a, 64); err == nil {
			secs = f
		}
	}
	dir, err := os.MkdirTemp("", "auditcost-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	srv, err := vaulttest.Start(filepath.Join(dir, "vault"))
	if err != nil {
		return err
	}
	defer srv.Stop()
	pid := findPID(filepath.Join(srv.Dir, "addr"))
	if pid == 0 {
		return fmt.Errorf("the Vault server's process not found")
	}
	c, err := vault.NewClient(&vault.Config{Address: srv.Addr})
	if err != nil {
		return err
	}
	c.SetToken(srv.Token)
	if noAudit {
		if err := c.Sys().DisableAudit("file"); err != nil {
			return fmt.Errorf("disabling the audit device: %w", err)
		}
	}
	kv := c.KVv2("secret")
	ctx := context.Background()
	seq := uint64(0)
	fmt.Printf("records/write  writes/s  bytes/write  Vault CPU ms/write  ms/record  µs/KiB\n")
	for _, per := range sizes {
		recs := make([]*audit.Record, per)
		for i := range recs {
			recs[i] = record(i)
		}
		var prof chan error
		if profDir != "" {
			prof = make(chan error, 1)
			go func() { prof <- profile(c, secs, filepath.Join(profDir, fmt.Sprintf("vault-%d.pprof", per))) }()
		}
		t0, c0 := time.Now(), cpu(pid)
		writes, bytes := 0, 0
		for time.Since(t0) < time.Duration(secs*float64(time.Second)) {
			seq++
			data, size, err := document(seq, recs)
			if err != nil {
				return err
			}
			if _, err := kv.Put(ctx, "escrowd/audit/chain/"+fmt.Sprintf("%020d", seq), data, vault.WithCheckAndSet(0)); err != nil {
				return err
			}
			writes++
			bytes += size
		}
		el, used := time.Since(t0), cpu(pid)-c0
		ms := used.Seconds() * 1000 / float64(writes)
		fmt.Printf("%13d  %8.0f  %11d  %18.3f  %9.4f  %6.1f\n", per, float64(writes)/el.Seconds(), bytes/writes,
			ms, ms/float64(per), ms*1000/(float64(bytes)/float64(writes)/1024))
		if prof != nil {
			if err := <-prof; err != nil {
				return err
			}
		}
	}
	return nil
}

// cpu is the process's user+system time.
func cpu(pid int) time.Duration {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0
	}
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
	u, _ := strconv.ParseUint(f[11], 10, 64)
	st, _ := strconv.ParseUint(f[12], 10, 64)
	return time.Duration(u+st) * 10 * time.Millisecond
}

// document is a batch as audit.Vault writes it: the chained records as
// one JSON string beside the position, key id and MAC (the hashes and MAC
// are of the right length, not computed: Vault does not check them).
func document(seq uint64, recs []*audit.Record) (map[string]any, int, error) {
	hash := strings.Repeat("ab", 32)
	chained := make([]audit.Chained, len(recs))
	for i, r := range recs {
		chained[i] = audit.Chained{Record: *r, N: seq*1000 + uint64(i), Prev: hash, Hash: hash}
	}
	raw, err := json.Marshal(chained)
	if err != nil {
		return nil, 0, err
	}
	d := map[string]any{"seq": seq, "records": string(raw), "key": strings.Repeat("cd", 8), "mac": hash}
	body, _ := json.Marshal(map[string]any{"data": d, "options": map[string]any{"cas": 0}})
	return d, len(body), nil
}

// findPID finds the process whose command line holds arg.
func findPID(arg string) int {
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, _ := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		for _, a := range strings.Split(string(b), "\x00") {
			if a == arg {
				return pid
			}
		}
	}
	return 0
}

// profile saves a CPU profile of Vault over the next secs seconds.
func profile(c *vault.Client, secs float64, to string) error {
	resp, err := c.Logical().ReadRawWithData("sys/pprof/profile", map[string][]string{"seconds": {strconv.Itoa(int(secs))}})
	if err != nil {
		return fmt.Errorf("the Vault server's profile: %w", err)
	}
	defer resp.Body.Close()
	if err := os.MkdirAll(filepath.Dir(to), 0o700); err != nil {
		return err
	}
	f, err := os.Create(to)
	if err != nil {
		return err
	}
	if _, err := io.Copy(f, resp.Body); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}
