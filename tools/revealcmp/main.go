// Command revealcmp runs two escrowd builds side by side, on one Vault dev
// server and one SoftHSM token, and measures RevealUnlockCode on each in
// interleaved rounds (the order alternating), so that both see the same
// machine. It prints each round and the median of the rounds with their
// range, and the CPU each round cost escrowd (SoftHSM runs inside it) and
// the Vault server, per reveal. Run from the repository root:
//
//	go run ./tools/revealcmp BEFORE_ESCROWD AFTER_ESCROWD ROUNDS REVEALS_PER_ROUND CONCURRENCY
//
// docs/BENCHMARKS.md gives the figures and the exact command.
package main

import (
	"context"
	"crypto/tls"
	"fmt"
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
	name string
	cmd  *exec.Cmd
	sup  escrowdv1.SupportServiceClient
	sync escrowdv1.SyncServiceClient
	next atomic.Int64 // the next code to reveal: user next/20
}

func main() {
	if len(os.Args) != 6 {
		fmt.Fprintln(os.Stderr, "usage: revealcmp BEFORE_ESCROWD AFTER_ESCROWD ROUNDS REVEALS_PER_ROUND CONCURRENCY")
		os.Exit(2)
	}
	oldBin, newBin := os.Args[1], os.Args[2]
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
	for _, b := range []struct{ name, bin string }{{"before", oldBin}, {"write-ahead", newBin}} {
		port++
		addr := fmt.Sprintf("127.0.0.1:%d", port)
		cmd := exec.Command(b.bin, "-listen", addr, "-store", filepath.Join(dir, b.name+".db"),
			"-hsm-module", tok.Module, "-hsm-token", tok.Label, "-hsm-pin-file", filepath.Join(tok.Dir, "user.pin"),
			"-vault-addr", v.Addr, "-vault-token-file", filepath.Join(dir, "vault.token"), "-audit-prefix", "cmp/"+b.name,
			"-log-level", "error", "-tls-cert", filepath.Join(dir, "server.crt"), "-tls-key", filepath.Join(dir, "server.key"),
			"-client-ca", filepath.Join(dir, "ca.crt"), "-policy", filepath.Join(dir, "policy.yaml"))
		cmd.Stderr = os.Stderr
		must(cmd.Start())
		defer cmd.Process.Kill()
		d := &daemon{name: b.name, cmd: cmd}
		d.sup = escrowdv1.NewSupportServiceClient(dial(addr, ca, alice))
		d.sync = escrowdv1.NewSyncServiceClient(dial(addr, ca, syncb))
		ds = append(ds, d)
	}
	ctx := context.Background()
	users := (rounds*perRound)/20 + 1
	for _, d := range ds {
		var r *escrowdv1.ProvisionGroupResponse
		for i := 0; ; i++ {
			r, err = d.sync.ProvisionGroup(ctx, &escrowdv1.ProvisionGroupRequest{GroupId: "g", Suite: "ecdh-p256"})
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
		for u := range users {
			_, err := d.sync.IssueUnlockCodes(ctx, &escrowdv1.IssueUnlockCodesRequest{GroupId: "g", UserId: "u" + strconv.Itoa(u), EscrowSlot: slot, Count: 20})
			must(err)
		}
	}
	// cpu, cpuVault: CPU milliseconds per reveal of the round.
	type res struct{ p50, p99, tput, cpu, cpuVault float64 }
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
			for range conc {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for range next {
						u := "u" + strconv.Itoa(int(d.next.Add(1)-1)/20)
						t0 := time.Now()
						_, err := d.sup.RevealUnlockCode(ctx, &escrowdv1.RevealUnlockCodeRequest{GroupId: "g", UserId: u, Ticket: "SUP-1"})
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
			slices.Sort(lat)
			n := float64(len(lat))
			r := res{ms(lat[len(lat)/2]), ms(lat[len(lat)*99/100]), n / took.Seconds(), (c1 - c0) / n, (v1 - v0) / n}
			all[d.name] = append(all[d.name], r)
			fmt.Printf("round %d %-12s p50 %.2f ms  p99 %.2f ms  %.0f reveals/s  CPU per reveal: escrowd %.3f ms, Vault %.3f ms\n",
				rd, d.name, r.p50, r.p99, r.tput, r.cpu, r.cpuVault)
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
		fmt.Printf("%-12s median over %d rounds: p50 %.2f ms (%.2f–%.2f), p99 %.2f ms (%.2f–%.2f), %.0f reveals/s (%.0f–%.0f), CPU per reveal: escrowd %.3f ms (%.3f–%.3f), Vault %.3f ms (%.3f–%.3f)\n",
			d.name, len(rs), a, amin, amax, b, bmin, bmax, c, cmin, cmax, e, emin, emax, f, fmin, fmax)
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
