package e2e

import (
	"bytes"
	"crypto/ecdh"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/rogpeppe/go-internal/testscript"

	"github.com/escrowd/escrowd/escrow/device"
)

// TestCLIScripts drives escrowctl against the real stack (SoftHSM, Vault,
// the embedded store), one escrowd per script in testdata/script, every
// command and its JSON output included. The scripts read as a user's
// session: `exec escrowctl …` then what it printed.
func TestCLIScripts(t *testing.T) {
	_, escrowctl := buildBinaries(t)
	// The e2e policy, with time for a script to approve a dual-control
	// reveal.
	pol, err := os.ReadFile("testdata/policy.yaml")
	if err != nil {
		t.Fatal(err)
	}
	polPath := filepath.Join(t.TempDir(), "policy.yaml")
	if err := os.WriteFile(polPath, bytes.Replace(pol, []byte("timeout: 3s"), []byte("timeout: 1m"), 1), 0o644); err != nil {
		t.Fatal(err)
	}
	scripts, _ := filepath.Glob("testdata/script/*.txtar")
	if len(scripts) == 0 {
		t.Fatal("no scripts")
	}
	addrs := map[string]string{}
	for _, sc := range scripts {
		name := strings.TrimSuffix(filepath.Base(sc), ".txtar")
		addrs[name] = newStackWith(t, vaultSrv, stackOpts{policy: polPath, prefix: "escrowd-test/cli-script-" + name, jobs: true}).addr
	}
	testscript.Run(t, testscript.Params{
		Dir:                 "testdata/script",
		RequireExplicitExec: true,
		Setup: func(env *testscript.Env) error {
			name := env.T().(interface{ Name() string }).Name()
			name = name[strings.LastIndex(name, "/")+1:]
			env.Setenv("ESCROWD_ADDR", addrs[name])
			// For audit verify and audit read: the script's own trail.
			env.Setenv("VAULT_ADDR", vaultSrv.Addr)
			env.Setenv("VAULT_TOKEN", vaultSrv.Token)
			env.Setenv("AUDIT_PREFIX", "escrowd-test/cli-script-"+name)
			env.Setenv("ESCROWCTL_PKI", pki.dir)
			env.Setenv("PATH", filepath.Dir(escrowctl)+string(os.PathListSeparator)+os.Getenv("PATH"))
			return nil
		},
		Cmds: map[string]func(ts *testscript.TestScript, neg bool, args []string){
			"genkey":    cmdGenkey,
			"openslot":  cmdOpenslot,
			"batchfile": cmdBatchfile,
			"jsonvar":   cmdJSONVar,
			"pendingid": cmdPendingID,
		},
	})
}

// genkey NAME: an ECDH P-256 key pair, NAME.pem (public, PKIX) and
// NAME.priv (PKCS #8), as a device makes one.
func cmdGenkey(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) != 1 {
		ts.Fatalf("usage: genkey NAME")
	}
	k, err := ecdh.P256().GenerateKey(rand.Reader)
	ts.Check(err)
	pub, err := x509.MarshalPKIXPublicKey(k.PublicKey())
	ts.Check(err)
	priv, err := x509.MarshalPKCS8PrivateKey(k)
	ts.Check(err)
	ts.Check(os.WriteFile(ts.MkAbs(args[0]+".pem"), pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pub}), 0o600))
	ts.Check(os.WriteFile(ts.MkAbs(args[0]+".priv"), priv, 0o600))
}

// openslot SLOT KEY GDK GROUP ID: the slot opens with KEY.priv, as the
// recipient ID of GROUP, to the data key in the file GDK.
func cmdOpenslot(ts *testscript.TestScript, neg bool, args []string) {
	if len(args) != 5 {
		ts.Fatalf("usage: openslot SLOT KEY GDK GROUP ID")
	}
	der, err := os.ReadFile(ts.MkAbs(args[1] + ".priv"))
	ts.Check(err)
	parsed, err := x509.ParsePKCS8PrivateKey(der)
	ts.Check(err)
	ec, ok := parsed.(*ecdsa.PrivateKey)
	if !ok {
		ts.Fatalf("openslot: %s.priv is not an EC key", args[1])
	}
	k, err := ec.ECDH()
	ts.Check(err)
	slot, err := os.ReadFile(ts.MkAbs(args[0]))
	ts.Check(err)
	want, err := os.ReadFile(ts.MkAbs(args[2]))
	ts.Check(err)
	gdk, _, err := device.OpenPublic(slot, device.Want{Group: args[3], ID: args[4]}, k)
	opened := err == nil && bytes.Equal(gdk, want)
	if opened == neg {
		ts.Fatalf("openslot %s: opened %v, error %v", args[0], opened, err)
	}
}

// batchfile OUT GROUP SLOT KEY: a JSON Lines file of three BatchRewrap
// items: a device slot for KEY, an escrow slot, and one for a group that
// does not exist.
func cmdBatchfile(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) != 4 {
		ts.Fatalf("usage: batchfile OUT GROUP SLOT KEY")
	}
	slot, err := os.ReadFile(ts.MkAbs(args[2]))
	ts.Check(err)
	b, err := os.ReadFile(ts.MkAbs(args[3] + ".pem"))
	ts.Check(err)
	blk, _ := pem.Decode(b)
	s64, k64 := base64.StdEncoding.EncodeToString(slot), base64.StdEncoding.EncodeToString(blk.Bytes)
	lines := []string{
		fmt.Sprintf(`{"reference":"dev-1","group_id":%q,"escrow_slot":%q,"recipient":{"kind":"KIND_DEVICE","id":"dev-1","key_version":1,"suite":"ecdh-p256","public_key":%q}}`, args[1], s64, k64),
		fmt.Sprintf(`{"reference":"esc-1","group_id":%q,"escrow_slot":%q,"escrow":{}}`, args[1], s64),
		fmt.Sprintf(`{"reference":"gone-1","group_id":"no-such-group","escrow_slot":%q,"escrow":{}}`, s64),
	}
	ts.Check(os.WriteFile(ts.MkAbs(args[0]), []byte(strings.Join(lines, "\n")+"\n"), 0o600))
}

// jsonvar VAR PATH: sets $VAR to the member at PATH (dots; numbers index
// arrays) of the JSON document the last command printed.
func cmdJSONVar(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) != 2 {
		ts.Fatalf("usage: jsonvar VAR PATH")
	}
	var v any
	ts.Check(json.Unmarshal([]byte(ts.ReadFile("stdout")), &v))
	for _, p := range strings.Split(args[1], ".") {
		switch x := v.(type) {
		case map[string]any:
			v = x[p]
		case []any:
			i, err := strconv.Atoi(p)
			if err != nil || i >= len(x) {
				ts.Fatalf("jsonvar: %s: no element %s", args[1], p)
			}
			v = x[i]
		default:
			ts.Fatalf("jsonvar: %s: nothing at %s", args[1], p)
		}
	}
	if v == nil {
		ts.Fatalf("jsonvar: %s: not found", args[1])
	}
	ts.Setenv(args[0], strings.Trim(fmt.Sprint(v), `"`))
}

// pendingid VAR GROUP: waits until `escrowctl codes pending` (as bob)
// lists a reveal of GROUP and sets $VAR to its id.
func cmdPendingID(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) != 2 {
		ts.Fatalf("usage: pendingid VAR GROUP")
	}
	for deadline := time.Now().Add(20 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		bin := filepath.Join(strings.Split(ts.Getenv("PATH"), string(os.PathListSeparator))[0], "escrowctl")
		cmd := exec.Command(bin, "codes", "pending", "--as", "bob", "-o", "json")
		cmd.Env = []string{"ESCROWD_ADDR=" + ts.Getenv("ESCROWD_ADDR"), "ESCROWCTL_PKI=" + ts.Getenv("ESCROWCTL_PKI")}
		out, err := cmd.Output()
		ts.Check(err)
		var r struct {
			Reveals []struct {
				ID      string `json:"id"`
				GroupID string `json:"group_id"`
			} `json:"reveals"`
		}
		ts.Check(json.Unmarshal(out, &r))
		for _, p := range r.Reveals {
			if p.GroupID == args[1] {
				ts.Setenv(args[0], p.ID)
				return
			}
		}
	}
	ts.Fatalf("no reveal of %s became pending", args[1])
}
