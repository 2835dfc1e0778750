// Command revealcmp runs two escrowd builds side by side, on one Vault dev
// server and one SoftHSM token, and measures RevealUnlockCode on each in
// interleaved rounds (the order alternating), so that both see the same
// machine. It prints each round and the median of the rounds with their
// range, and the CPU each round cost escrowd (SoftHSM runs inside it) and
// the Vault server, per reveal, and the records per Vault write (from
// each daemon's metrics). Run from the repository root:
//
//	go run ./tools/revealcmp BEFORE_ESCROWD AFTER_ESCROWD ROUNDS REVEALS_PER_ROUND CONCURRENCY
//
// The environment changes what is measured:
//
//	REVEALCMP_OP=rewrap          SyncService.Rewrap instead of reveals
//	REVEALCMP_OP=batch           SyncService.BatchRewrap of REVEALCMP_BATCH items (default 32)
//	REVEALCMP_SUITE=SUITE        the group's suite, and a re-wrap's recipient's (default ecdh-p256)
//	REVEALCMP_FLAGS_BEFORE=FLAGS extra escrowd flags of the first side, space-separated
//	REVEALCMP_FLAGS_AFTER=FLAGS  and of the second (the same binary twice compares settings)
//	REVEALCMP_NAMES=A,B          the sides' names (default before,write-ahead)
//
// docs/BENCHMARKS.md gives the figures and the exact command.
package main

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	escrowdv1 "github.com/escrowd/escrowd/api/escrowd/v1"
	"github.com/escrowd/escrowd/escrow/bundle"
	"github.com/escrowd/escrowd/escrow/device"
	"github.com/escrowd/escrowd/internal/bench"
	"github.com/escrowd/escrowd/internal/devpki"
	"github.com/escrowd/escrowd/internal/vaulttest"
	"github.com/escrowd/escrowd/softhsm"
)

func must(err error) {
	if err != nil {
		panic(err)
	}
}

type daemon struct {
	name    string
	cmd     *exec.Cmd
	sup     escrowdv1.SupportServiceClient
	sync    escrowdv1.SyncServiceClient
	next    atomic.Int64 // the next code to reveal: user next/20
	metrics string       // the /metrics URL
	slot    []byte       // the group's escrow slot, for re-wraps
}

func main() {
	if len(os.Args) != 6 {
		fmt.Fprintln(os.Stderr, "usage: revealcmp BEFORE_ESCROWD AFTER_ESCROWD ROUNDS REVEALS_PER_ROUND CONCURRENCY")
		os.Exit(2)
	}
	oldBin, newBin := os.Args[1], os.Args[2]
	op := os.Getenv("REVEALCMP_OP")
	if op == "" {
		op = "reveal"
	}
	if op != "reveal" && op != "rewrap" && op != "batch" {
		fmt.Fprintln(os.Stderr, "revealcmp: REVEALCMP_OP is reveal, rewrap or batch")
		os.Exit(2)
	}
	items := 32
	if n, err := strconv.Atoi(os.Getenv("REVEALCMP_BATCH")); err == nil && n > 0 {
		items = n
	}
	suite := os.Getenv("REVEALCMP_SUITE")
	if suite == "" {
		suite = bundle.SuiteECDHP256
	}
	names := []string{"before", "write-ahead"}
	if n := strings.Split(os.Getenv("REVEALCMP_NAMES"), ","); len(n) == 2 {
		names = n
	}
	flags := [][]string{strings.Fields(os.Getenv("REVEALCMP_FLAGS_BEFORE")), strings.Fields(os.Getenv("REVEALCMP_FLAGS_AFTER"))}
	rounds, _ := strconv.Atoi(os.Args[3])
	perRound, _ := strconv.Atoi(os.Args[4])
	conc, _ := strconv.Atoi(os.Args[5])
	dir, err := os.MkdirTemp("", "revealcmp")
	must(err)
	defer os.RemoveAll(dir)
	v, err := vaulttest.Start(filepath.Join(dir, "vault"))
	must(err)
	defer v.Stop()
	vaultPID := bench.FindPID(filepath.Join(v.Dir, "addr"))
	if vaultPID == 0 {
		panic("revealcmp: the Vault server's process is not found")
	}
	tok, err := softhsm.New(filepath.Join(dir, "hsm"), "cmp")
	must(err)
	os.Setenv("SOFTHSM2_CONF", filepath.Join(tok.Dir, "softhsm2.conf"))
	ca, err := devpki.NewCA("cmp CA")
	must(err)
	srv, err := ca.Server()
	must(err)
	must(srv.Write(dir, "server"))
	must(os.WriteFile(filepath.Join(dir, "ca.crt"), caPEM(ca), 0o600))
	alice, _ := ca.Client("spiffe://escrowd.test/support/alice", time.Time{}, time.Time{})
	syncb, _ := ca.Client("spiffe://escrowd.test/sync-backend", time.Time{}, time.Time{})
	pol, err := os.ReadFile("e2e/testdata/policy.yaml")
	must(err)
	p := strings.Replace(string(pol), "per: user, limit: 3,", "per: user, limit: 100000,", 1)
	p = strings.Replace(p, "per: caller, limit: 500,", "per: caller, limit: 10000000,", 1)
	must(os.WriteFile(filepath.Join(dir, "policy.yaml"), []byte(p), 0o600))
	must(os.WriteFile(filepath.Join(dir, "vault.token"), []byte(v.Token+"\n"), 0o600))
	port := 24100
	var ds []*daemon
	for i, b := range []struct{ name, bin string }{{names[0], oldBin}, {names[1], newBin}} {
		port++
		addr := fmt.Sprintf("127.0.0.1:%d", port)
		maddr := fmt.Sprintf("127.0.0.1:%d", port+100)
		args := append([]string{"-metrics-listen", maddr, "-listen", addr, "-store", filepath.Join(dir, b.name+".db"),
			"-hsm-module", tok.Module, "-hsm-token", tok.Label, "-hsm-pin-file", filepath.Join(tok.Dir, "user.pin"),
			"-vault-addr", v.Addr, "-vault-token-file", filepath.Join(dir, "vault.token"), "-audit-prefix", "cmp/" + b.name,
			"-log-level", "error", "-tls-cert", filepath.Join(dir, "server.crt"), "-tls-key", filepath.Join(dir, "server.key"),
			"-client-ca", filepath.Join(dir, "ca.crt"), "-policy", filepath.Join(dir, "policy.yaml")}, flags[i]...)
		cmd := exec.Command(b.bin, args...)
		cmd.Stderr = os.Stderr
		must(cmd.Start())
		defer cmd.Process.Kill()
		d := &daemon{name: b.name, cmd: cmd, metrics: "http://" + maddr + "/metrics"}
		d.sup = escrowdv1.NewSupportServiceClient(dial(addr, ca, alice))
		d.sync = escrowdv1.NewSyncServiceClient(dial(addr, ca, syncb))
		ds = append(ds, d)
	}
	ctx := context.Background()
	users := (rounds*perRound)/20 + 1
	for _, d := range ds {
		var r *escrowdv1.ProvisionGroupResponse
		for i := 0; ; i++ {
			r, err = d.sync.ProvisionGroup(ctx, &escrowdv1.ProvisionGroupRequest{GroupId: "g", Suite: suite})
			if err == nil || i > 200 {
				break
			}
			time.Sleep(100 * time.Millisecond)
		}
		must(err)
		gdk, _ := device.NewGDK()
		k := r.GetEscrowKey()
		slot, err := device.SealEscrow(k.GetPublicKey(), device.To{Group: "g", GDKVersion: 1, KeyVersion: k.GetVersion()}, k.GetSuite(), gdk)
		must(err)
		d.slot = slot
		if op != "reveal" {
			continue
		}
		for u := range users {
			_, err := d.sync.IssueUnlockCodes(ctx, &escrowdv1.IssueUnlockCodesRequest{GroupId: "g", UserId: "u" + strconv.Itoa(u), EscrowSlot: slot, Count: 20})
			must(err)
		}
	}
	member := recipient(suite)
	call := func(d *daemon) error {
		switch op {
		case "rewrap":
			_, err := d.sync.Rewrap(ctx, &escrowdv1.RewrapRequest{GroupId: "g", EscrowSlot: d.slot, Recipient: member})
			return err
		case "batch":
			req := &escrowdv1.BatchRewrapRequest{}
			for j := range items {
				req.Items = append(req.Items, &escrowdv1.BatchRewrapItem{Reference: strconv.Itoa(j), GroupId: "g", EscrowSlot: d.slot,
					Target: &escrowdv1.BatchRewrapItem_Recipient{Recipient: member}})
			}
			_, err := d.sync.BatchRewrap(ctx, req)
			return err
		}
		u := "u" + strconv.Itoa(int(d.next.Add(1)-1)/20)
		_, err := d.sup.RevealUnlockCode(ctx, &escrowdv1.RevealUnlockCodeRequest{GroupId: "g", UserId: u, Ticket: "SUP-1"})
		return err
	}
	// cpu, cpuVault: CPU milliseconds per call of the round; perWrite:
	// records per Vault write.
	type res struct{ p50, p99, tput, cpu, cpuVault, perWrite, writeMs float64 }
	all := map[string][]res{}
	for rd := range rounds {
		order := ds
		if rd%2 == 1 {
			order = []*daemon{ds[1], ds[0]}
		}
		for _, d := range order {
			var mu sync.Mutex
			var lat []time.Duration
			var wg sync.WaitGroup
			next := make(chan struct{}, perRound)
			for range perRound {
				next <- struct{}{}
			}
			close(next)
			start := time.Now()
			c0, v0 := procCPU(d.cmd.Process.Pid), procCPU(vaultPID)
			w0, r0, s0 := auditWrites(d.metrics)
			for range conc {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for range next {
						t0 := time.Now()
						err := call(d)
						el := time.Since(t0)
						if err != nil {
							fmt.Fprintln(os.Stderr, d.name, err)
							continue
						}
						mu.Lock()
						lat = append(lat, el)
						mu.Unlock()
					}
				}()
			}
			wg.Wait()
			took := time.Since(start)
			c1, v1 := procCPU(d.cmd.Process.Pid), procCPU(vaultPID)
			w1, r1, s1 := auditWrites(d.metrics)
			slices.Sort(lat)
			n := float64(len(lat))
			r := res{ms(lat[len(lat)/2]), ms(lat[len(lat)*99/100]), n / took.Seconds(), (c1 - c0) / n, (v1 - v0) / n, (r1 - r0) / max(w1-w0, 1), (s1 - s0) * 1000 / max(w1-w0, 1)}
			all[d.name] = append(all[d.name], r)
			fmt.Printf("round %d %-12s p50 %.2f ms  p99 %.2f ms  %.0f %ss/s  CPU per %s: escrowd %.3f ms, Vault %.3f ms  records per write %.1f, %.2f ms each\n",
				rd, d.name, r.p50, r.p99, r.tput, op, op, r.cpu, r.cpuVault, r.perWrite, r.writeMs)
		}
	}
	// The ratios of each round's pair (after / before), which the
	// machine's drift between rounds does not move.
	ratio := func(f func(res) float64) (float64, float64, float64) {
		b, a := all[ds[0].name], all[ds[1].name]
		x := make([]float64, len(a))
		for i := range a {
			x[i] = f(a[i]) / f(b[i])
		}
		slices.Sort(x)
		return x[len(x)/2], x[0], x[len(x)-1]
	}
	p50r, p50lo, p50hi := ratio(func(r res) float64 { return r.p50 })
	p99r, p99lo, p99hi := ratio(func(r res) float64 { return r.p99 })
	tr, tlo, thi := ratio(func(r res) float64 { return r.tput })
	// CPU-normalised: reveals per CPU second of escrowd and Vault together,
	// after over before.
	cr, clo, chi := ratio(func(r res) float64 { return 1 / (r.cpu + r.cpuVault) })
	fmt.Printf("paired ratio %s / %s, median over %d rounds (range): p50 %.2f (%.2f–%.2f), p99 %.2f (%.2f–%.2f), throughput %.2f (%.2f–%.2f), CPU-normalised (escrowd + Vault) %.2f (%.2f–%.2f)\n",
		ds[1].name, ds[0].name, rounds, p50r, p50lo, p50hi, p99r, p99lo, p99hi, tr, tlo, thi, cr, clo, chi)
	for _, d := range ds {
		rs := all[d.name]
		med := func(f func(res) float64) (float64, float64, float64) {
			x := make([]float64, len(rs))
			for i, r := range rs {
				x[i] = f(r)
			}
			slices.Sort(x)
			return x[len(x)/2], x[0], x[len(x)-1]
		}
		a, amin, amax := med(func(r res) float64 { return r.p50 })
		b, bmin, bmax := med(func(r res) float64 { return r.p99 })
		c, cmin, cmax := med(func(r res) float64 { return r.tput })
		e, emin, emax := med(func(r res) float64 { return r.cpu })
		f, fmin, fmax := med(func(r res) float64 { return r.cpuVault })
		g, gmin, gmax := med(func(r res) float64 { return r.perWrite })
		fmt.Printf("%-12s median over %d rounds: p50 %.2f ms (%.2f–%.2f), p99 %.2f ms (%.2f–%.2f), %.0f %ss/s (%.0f–%.0f), CPU per %s: escrowd %.3f ms (%.3f–%.3f), Vault %.3f ms (%.3f–%.3f), records per write %.1f (%.1f–%.1f)\n",
			d.name, len(rs), a, amin, amax, b, bmin, bmax, c, op, cmin, cmax, op, e, emin, emax, f, fmin, fmax, g, gmin, gmax)
	}
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

// procCPU is a process's CPU time so far (utime + stime), in
// milliseconds; /proc counts it in ticks of 10 ms.
func procCPU(pid int) float64 {
	t, err := bench.ProcCPU(pid)
	must(err)
	return float64(t) * 10
}

func caPEM(ca *devpki.CA) []byte { return ca.PEM }

func dial(addr string, ca *devpki.CA, p *devpki.Pair) *grpc.ClientConn {
	c, err := p.TLS()
	must(err)
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{RootCAs: ca.Pool(), Certificates: []tls.Certificate{c}, MinVersion: tls.VersionTLS13})))
	must(err)
	return conn
}

// recipient is a member key of the suite to re-wrap to.
func recipient(suite string) *escrowdv1.Recipient {
	var pub any
	if suite == bundle.SuiteECDHP256 {
		k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		must(err)
		pub = &k.PublicKey
	} else {
		k, err := rsa.GenerateKey(rand.Reader, 2048)
		must(err)
		pub = &k.PublicKey
	}
	der, err := x509.MarshalPKIXPublicKey(pub)
	must(err)
	return &escrowdv1.Recipient{Kind: escrowdv1.Recipient_KIND_MEMBER, Id: "member-1", KeyVersion: 1, Suite: suite, PublicKey: der}
}

// auditWrites reads the daemon's count of Vault writes, of the records
// they carried and of the seconds they took.
func auditWrites(url string) (writes, records, secs float64) {
	resp, err := http.Get(url)
	must(err)
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		name, val, ok := strings.Cut(sc.Text(), " ")
		if !ok {
			continue
		}
		f, err := strconv.ParseFloat(val, 64)
		if err != nil {
			continue
		}
		switch name {
		case "escrowd_audit_batch_records_count":
			writes = f
		case "escrowd_audit_batch_records_sum":
			records = f
		case `escrowd_audit_commit_duration_seconds_sum{result="ok"}`:
			secs = f
		}
	}
	must(sc.Err())
	return writes, records, secs
}
