package main

import (
	"bytes"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/spf13/cobra"

	escrowdv1 "github.com/escrowd/escrowd/api/escrowd/v1"
	"github.com/escrowd/escrowd/client"
)

func leaves(c *cobra.Command) []*cobra.Command {
	var out []*cobra.Command
	for _, s := range c.Commands() {
		if s.Hidden || s.Name() == "help" || s.Name() == "completion" {
			continue
		}
		if s.HasSubCommands() && s.Name() != "jobs" {
			out = append(out, leaves(s)...)
			continue
		}
		out = append(out, s)
		out = append(out, leaves(s)...)
	}
	return out
}

// TestEveryRPCHasACommand: each RPC of the API is reachable from a
// command, which names it in its short help.
func TestEveryRPCHasACommand(t *testing.T) {
	root := newRoot(&app{out: &bytes.Buffer{}, errOut: &bytes.Buffer{}})
	var shorts []string
	for _, c := range leaves(root) {
		shorts = append(shorts, c.Short)
	}
	all := strings.Join(shorts, "\n")
	svcs := escrowdv1.File_escrowd_v1_escrowd_proto.Services()
	for i := 0; i < svcs.Len(); i++ {
		s := svcs.Get(i)
		for j := 0; j < s.Methods().Len(); j++ {
			name := string(s.Name()) + "." + string(s.Methods().Get(j).Name())
			if !strings.Contains(all, "("+name+")") {
				t.Errorf("no command calls %s", name)
			}
		}
	}
}

// TestOutputFlag: every command that calls escrowd and prints data takes
// -o json; group key has --format instead, dev seal-escrow writes a file.
func TestOutputFlag(t *testing.T) {
	root := newRoot(&app{out: &bytes.Buffer{}, errOut: &bytes.Buffer{}})
	for _, c := range leaves(root) {
		path := c.CommandPath()
		if c.Flags().Lookup("addr") == nil || path == "escrowctl group key" || path == "escrowctl dev seal-escrow" {
			continue
		}
		if f := c.Flags().ShorthandLookup("o"); f == nil || f.Name != "output" {
			t.Errorf("%s has no -o", path)
		}
	}
}

// TestPerCommandHelp: a command's help lists its own flags, not every
// command's.
func TestPerCommandHelp(t *testing.T) {
	var out bytes.Buffer
	if err := runWith([]string{"codes", "reveal", "-h"}, &out, &out); err != nil {
		t.Fatal(err)
	}
	h := out.String()
	for _, want := range []string{"--ticket", "--group", "--user", "--as", "-o, --output", "dual control"} {
		if !strings.Contains(h, want) {
			t.Errorf("codes reveal -h lacks %q:\n%s", want, h)
		}
	}
	for _, not := range []string{"--kek-version", "--so-pin-file", "--escrow-slot", "--vault-addr", "--format"} {
		if strings.Contains(h, not) {
			t.Errorf("codes reveal -h lists %s:\n%s", not, h)
		}
	}
}

func TestLongFlags(t *testing.T) {
	root := newRoot(&app{out: &bytes.Buffer{}, errOut: &bytes.Buffer{}})
	tests := []struct{ in, want []string }{
		{[]string{"group", "show", "-group", "g", "-as", "carol"}, []string{"group", "show", "--group", "g", "--as", "carol"}},
		{[]string{"group", "key", "-format=der"}, []string{"group", "key", "--format=der"}},
		{[]string{"audit", "read", "-n", "5", "-o", "json"}, []string{"audit", "read", "-n", "5", "-o", "json"}},
		{[]string{"codes", "reveal", "--ticket", "-nosuchflag"}, []string{"codes", "reveal", "--ticket", "-nosuchflag"}},
		{[]string{"policy", "check", "--", "-group"}, []string{"policy", "check", "--", "-group"}},
		{[]string{"x", "-h"}, []string{"x", "-h"}},
		{[]string{"x", "-help"}, []string{"x", "--help"}},
	}
	for _, tt := range tests {
		if got := longFlags(root, tt.in); !reflect.DeepEqual(got, tt.want) {
			t.Errorf("longFlags(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}

// TestUsageErrors: mistakes on the command line exit 2 before anything is
// dialled (the address is one nothing listens on).
func TestUsageErrors(t *testing.T) {
	for _, args := range [][]string{
		{},
		{"nope"},
		{"group"},
		{"group", "nope"},
		{"group", "show"},
		{"group", "show", "-group", "g", "-o", "yaml"},
		{"codes", "reveal", "-group", "g", "-user", "u"},
		{"codes", "consumed", "-group", "g", "-user", "u", "-epoch", "1"},
		{"group", "show", "-nosuch", "x"},
		{"rewrap", "-group", "g", "-escrow-slot", "f", "-out", "o", "-recipient", "kind=member"},
		{"jobs", "start", "-kind", "kek-rotation"},
		{"policy", "check"},
	} {
		var out, errOut bytes.Buffer
		err := runWith(append(args, "-addr", "127.0.0.1:1"), &out, &errOut)
		if len(args) == 0 || args[0] == "policy" {
			err = runWith(args, &out, &errOut)
		}
		if exitCode(err) != 2 {
			t.Errorf("%q: %v (exit %d), want a usage error", args, err, exitCode(err))
		}
	}
	var out bytes.Buffer
	err := runWith([]string{"codes", "reveal", "-group", "g", "-user", "u"}, &out, &out)
	if err == nil || !strings.Contains(err.Error(), "-ticket is required") {
		t.Fatalf("reveal without a ticket: %v", err)
	}
}

// TestHints: the errors of escrowd come with what to do next.
func TestHints(t *testing.T) {
	rl := &client.Error{Code: client.ResourceExhausted, Message: "rate limit reveals-per-user reached: 3 per 24h0m0s", RequestID: "r-9",
		Reason: client.ReasonRateLimited, RetryAfter: 8 * time.Hour,
		Metadata: map[string]string{"limit": "reveals-per-user", "max": "3", "window": "24h0m0s", "interval": "8h0m0s"}}
	got := describe(errors.Join(rl))
	for _, want := range []string{"ResourceExhausted", "reveals-per-user", "3 requests per 24h0m0s", "one every 8h0m0s", "in about 8h0m0s",
		"rate_limits", "policy file", "SIGHUP", "request r-9"} {
		if !strings.Contains(got, want) {
			t.Errorf("rate limit message lacks %q:\n%s", want, got)
		}
	}
	rt := &client.Error{Code: client.FailedPrecondition, Message: "key version retired", Reason: client.ReasonKeyVersionRetired,
		Metadata: map[string]string{"group": "g", "kind": "unlock", "version": "1", "min_version": "2", "latest": "2"}}
	if got := describe(rt); !strings.Contains(got, "codes issue") || !strings.Contains(got, "minimum 2") {
		t.Errorf("retired: %s", got)
	}
	for code, want := range map[client.Code]string{client.Unavailable: "--addr", client.PermissionDenied: "policy", client.Unauthenticated: "--cert"} {
		if got := describe(&client.Error{Code: code, Message: "m"}); !strings.Contains(got, want) {
			t.Errorf("%s: %s", code, got)
		}
	}
	if got := describe(&client.Error{Code: client.NotFound, Message: "group g not found"}); got != "NotFound: group g not found" {
		t.Errorf("not found: %q", got)
	}
}

// TestCompletion: the scripts for bash, zsh and fish are generated, bash
// parses its own, and dynamic completion offers commands and flag values.
func TestCompletion(t *testing.T) {
	for _, sh := range []struct{ name, marker string }{
		{"bash", "__start_escrowctl"}, {"zsh", "#compdef escrowctl"}, {"fish", "complete -c escrowctl"},
	} {
		var out bytes.Buffer
		if err := runWith([]string{"completion", sh.name}, &out, &out); err != nil {
			t.Fatalf("completion %s: %v", sh.name, err)
		}
		if !strings.Contains(out.String(), sh.marker) {
			t.Fatalf("completion %s lacks %q", sh.name, sh.marker)
		}
		if bin, err := exec.LookPath(sh.name); err == nil {
			f := filepath.Join(t.TempDir(), "c."+sh.name)
			os.WriteFile(f, out.Bytes(), 0o600)
			if o, err := exec.Command(bin, "-n", f).CombinedOutput(); err != nil {
				t.Fatalf("%s -n of its completion script: %v\n%s", sh.name, err, o)
			}
		} else {
			t.Logf("%s not installed: its script was generated, not parsed", sh.name)
		}
	}
	complete := func(args ...string) string {
		var out bytes.Buffer
		if err := runWith(append([]string{cobra.ShellCompRequestCmd}, args...), &out, &bytes.Buffer{}); err != nil {
			t.Fatal(err)
		}
		return out.String()
	}
	for _, tt := range []struct {
		args []string
		want []string
	}{
		{[]string{""}, []string{"group", "codes", "rewrap", "batch-rewrap", "jobs", "events", "hsm", "audit", "policy", "dev"}},
		{[]string{"codes", ""}, []string{"issue", "reveal", "list", "pending", "approve", "consumed"}},
		{[]string{"group", ""}, []string{"rotate-gdk", "rewrap-escrow", "key"}},
		{[]string{"group", "key", "--format", ""}, []string{"pem", "der", "jwk"}},
		{[]string{"codes", "list", "-o", ""}, []string{"text", "json"}},
		{[]string{"jobs", "start", "--kind", ""}, []string{"kek-rotation", "group-rotation"}},
		{[]string{"group", "destroy", "--kind", ""}, []string{"escrow", "unlock"}},
	} {
		got := complete(tt.args...)
		for _, w := range tt.want {
			if !strings.Contains(got, w+"\t") && !strings.Contains(got, w+"\n") {
				t.Errorf("completing %q: no %q in\n%s", tt.args, w, got)
			}
		}
	}
	t.Setenv("ESCROWCTL_PKI", t.TempDir())
	for _, n := range []string{"alice", "carol", "server"} {
		os.WriteFile(filepath.Join(os.Getenv("ESCROWCTL_PKI"), n+".key"), nil, 0o600)
	}
	if got := complete("group", "show", "--as", ""); !strings.Contains(got, "alice\n") || !strings.Contains(got, "carol\n") || strings.Contains(got, "server") {
		t.Errorf("--as completion: %s", got)
	}
}
