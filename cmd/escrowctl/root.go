package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	"github.com/escrowd/escrowd/client"
)

// app is what every command shares: where output goes.
type app struct {
	out, errOut io.Writer
}

// run builds the command tree and runs the command args name. Output goes
// to out, messages to stderr.
func run(args []string, out io.Writer) error {
	return runWith(args, out, os.Stderr)
}

func runWith(args []string, out, errOut io.Writer) error {
	root := newRoot(&app{out: out, errOut: errOut})
	root.SetArgs(longFlags(root, args))
	root.SetOut(out)
	root.SetErr(errOut)
	_, err := root.ExecuteC()
	return err
}

func newRoot(a *app) *cobra.Command {
	root := &cobra.Command{
		Use:   "escrowctl",
		Short: "escrowctl talks to escrowd and to the HSM",
		Long: `escrowctl talks to escrowd and to the HSM.

Commands that call escrowd authenticate with a client certificate: --cert,
--key and --ca (or $ESCROWCTL_CERT, _KEY, _CA), or --as NAME for NAME.crt,
NAME.key and ca.crt in $ESCROWCTL_PKI. The daemon is at --addr (default
$ESCROWD_ADDR or 127.0.0.1:7420). Flags take one dash or two: -group and
--group are the same.

Every command that prints data takes -o json.`,
		SilenceErrors: true,
		SilenceUsage:  true,
		// Without a subcommand: the usage, and a usage error.
		RunE: func(cmd *cobra.Command, args []string) error {
			if len(args) > 0 {
				return usageError{fmt.Sprintf("unknown command %q; escrowctl --help lists them", args[0])}
			}
			cmd.SetOut(a.errOut)
			cmd.Usage()
			return usageError{"a command is required"}
		},
		Args: cobra.ArbitraryArgs,
	}
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return usageError{err.Error()} })
	root.AddGroup(&cobra.Group{ID: "daemon", Title: "Commands that call escrowd:"},
		&cobra.Group{ID: "offline", Title: "Commands that need no daemon:"})
	for _, c := range []*cobra.Command{groupCmd(a), codesCmd(a), rewrapCmd(a), batchRewrapCmd(a), jobsCmd(a), eventsCmd(a)} {
		c.GroupID = "daemon"
		root.AddCommand(c)
	}
	for _, c := range []*cobra.Command{hsmCmd(a), auditCmd(a), policyCmd(a), devCmd(a)} {
		c.GroupID = "offline"
		root.AddCommand(c)
	}
	root.SetCompletionCommandGroupID("offline")
	root.SetHelpCommandGroupID("offline")
	return root
}

// parent makes a command that only holds subcommands: run alone, or with
// an unknown subcommand, it is a usage error that lists them.
func parent(use, short string, subs ...*cobra.Command) *cobra.Command {
	c := &cobra.Command{
		Use:   use,
		Short: short,
		Args:  cobra.ArbitraryArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			var names []string
			for _, s := range cmd.Commands() {
				if s.IsAvailableCommand() {
					names = append(names, s.Name())
				}
			}
			if len(args) > 0 {
				return usageError{fmt.Sprintf("%s: unknown command %q; one of: %s", cmd.Name(), args[0], strings.Join(names, ", "))}
			}
			return usageError{fmt.Sprintf("%s needs a command: one of %s (%s --help)", cmd.Name(), strings.Join(names, ", "), cmd.CommandPath())}
		},
	}
	c.AddCommand(subs...)
	return c
}

// longFlags lets a long flag take one dash, as escrowctl's flags did
// before they had two: "-group g" and "-group=g" become "--group g" and
// "--group=g" when group is a flag of some command. One-letter flags
// (-o, -n, -h) are left alone, and so is everything after "--".
func longFlags(root *cobra.Command, args []string) []string {
	known := map[string]bool{}
	var walk func(c *cobra.Command)
	walk = func(c *cobra.Command) {
		add := func(f *pflag.Flag) { known[f.Name] = true }
		c.Flags().VisitAll(add)
		c.PersistentFlags().VisitAll(add)
		for _, s := range c.Commands() {
			walk(s)
		}
	}
	walk(root)
	known["help"] = true
	out := make([]string, len(args))
	for i, a := range args {
		out[i] = a
		if a == "--" {
			copy(out[i:], args[i:])
			break
		}
		if len(a) < 3 || a[0] != '-' || a[1] == '-' {
			continue
		}
		name, _, _ := strings.Cut(a[1:], "=")
		if known[name] {
			out[i] = "-" + a
		}
	}
	return out
}

// required checks that each named flag has a value.
func required(cmd *cobra.Command, names ...string) error {
	for _, n := range names {
		f := cmd.Flags().Lookup(n)
		if f == nil || f.Value.Type() == "string" && f.Value.String() == "" || f.Value.Type() != "string" && !f.Changed {
			return usageError{fmt.Sprintf("%s: --%s is required", strings.TrimPrefix(cmd.CommandPath(), "escrowctl "), n)}
		}
	}
	return nil
}

// daemonFlags are the flags of a command that calls escrowd.
type daemonFlags struct {
	addr, cert, key, ca, as string
	timeout                 time.Duration
}

// daemonCmd registers the connection flags on c; defTimeout is the
// command's default --timeout.
func daemonCmd(c *cobra.Command, defTimeout time.Duration) *daemonFlags {
	d := &daemonFlags{}
	f := c.Flags()
	f.StringVar(&d.addr, "addr", envOr("ESCROWD_ADDR", "127.0.0.1:7420"), "escrowd address ($ESCROWD_ADDR)")
	f.DurationVar(&d.timeout, "timeout", defTimeout, "time allowed for the command, retries included")
	f.StringVar(&d.cert, "cert", os.Getenv("ESCROWCTL_CERT"), "client certificate, PEM ($ESCROWCTL_CERT)")
	f.StringVar(&d.key, "key", os.Getenv("ESCROWCTL_KEY"), "client key, PEM ($ESCROWCTL_KEY)")
	f.StringVar(&d.ca, "ca", os.Getenv("ESCROWCTL_CA"), "CA that signs escrowd's certificate, PEM ($ESCROWCTL_CA)")
	f.StringVar(&d.as, "as", "", "use NAME.crt, NAME.key and ca.crt from $ESCROWCTL_PKI")
	for _, n := range []string{"cert", "key", "ca"} {
		c.MarkFlagFilename(n, "pem", "crt", "key")
	}
	c.RegisterFlagCompletionFunc("as", completeIdentities)
	return d
}

// completeIdentities offers the certificate names in $ESCROWCTL_PKI.
func completeIdentities(*cobra.Command, []string, string) ([]string, cobra.ShellCompDirective) {
	dir := os.Getenv("ESCROWCTL_PKI")
	if dir == "" {
		return nil, cobra.ShellCompDirectiveNoFileComp
	}
	m, _ := filepath.Glob(filepath.Join(dir, "*.key"))
	var names []string
	for _, p := range m {
		if n := strings.TrimSuffix(filepath.Base(p), ".key"); n != "server" {
			names = append(names, n)
		}
	}
	sort.Strings(names)
	return names, cobra.ShellCompDirectiveNoFileComp
}

// dial connects to escrowd; the context bounds the whole command.
func (d *daemonFlags) dial(parent context.Context) (context.Context, *client.Client, func(), error) {
	cert, key, ca := d.cert, d.key, d.ca
	if d.as != "" {
		pki := os.Getenv("ESCROWCTL_PKI")
		if pki == "" {
			return nil, nil, nil, usageError{"--as needs $ESCROWCTL_PKI, the folder of the certificates"}
		}
		cert, key, ca = filepath.Join(pki, d.as+".crt"), filepath.Join(pki, d.as+".key"), filepath.Join(pki, "ca.crt")
	}
	if cert == "" || key == "" || ca == "" {
		return nil, nil, nil, usageError{"a client certificate is required: --cert, --key and --ca, or --as NAME with $ESCROWCTL_PKI"}
	}
	c, err := client.Dial(parent, client.Config{Addr: d.addr, CertFile: cert, KeyFile: key, CAFile: ca})
	if err != nil {
		return nil, nil, nil, err
	}
	dialedAddr = d.addr
	ctx, cancel := context.WithTimeout(parent, d.timeout)
	return ctx, c, func() { cancel(); c.Close() }, nil
}

// dialedAddr is the daemon address of the command, for error hints.
var dialedAddr string

// outputFlag is -o: text for people (the default) or json.
type outputFlag struct{ format string }

func addOutput(c *cobra.Command) *outputFlag {
	o := &outputFlag{}
	c.Flags().StringVarP(&o.format, "output", "o", "text", "output format: text or json")
	c.RegisterFlagCompletionFunc("output", cobra.FixedCompletions([]string{"text", "json"}, cobra.ShellCompDirectiveNoFileComp))
	return o
}

func (o *outputFlag) check() error {
	if o.format != "text" && o.format != "json" {
		return usageError{fmt.Sprintf("unknown -o %q; accepted: text, json", o.format)}
	}
	return nil
}

func (o *outputFlag) json() bool { return o.format == "json" }

// protoJSON renders m in the API's JSON mapping with the .proto field
// names, indented, plus extra members (a request id); protojson's spacing
// is made stable.
func protoJSON(m proto.Message, extra map[string]any, indent bool) ([]byte, error) {
	b, err := protojson.MarshalOptions{UseProtoNames: true, EmitUnpopulated: true}.Marshal(m)
	if err != nil {
		return nil, err
	}
	if len(extra) > 0 {
		var obj map[string]json.RawMessage
		if err := json.Unmarshal(b, &obj); err != nil {
			return nil, err
		}
		for k, v := range extra {
			raw, err := json.Marshal(v)
			if err != nil {
				return nil, err
			}
			obj[k] = raw
		}
		if b, err = json.Marshal(obj); err != nil {
			return nil, err
		}
	}
	var buf bytes.Buffer
	if err := json.Compact(&buf, b); err != nil {
		return nil, err
	}
	if !indent {
		return buf.Bytes(), nil
	}
	var ind bytes.Buffer
	if err := json.Indent(&ind, buf.Bytes(), "", "  "); err != nil {
		return nil, err
	}
	return ind.Bytes(), nil
}

// emitJSON writes m (and extra) as one indented JSON document.
func emitJSON(out io.Writer, m proto.Message, extra map[string]any) error {
	b, err := protoJSON(m, extra, true)
	if err != nil {
		return err
	}
	_, err = fmt.Fprintf(out, "%s\n", b)
	return err
}

// emitJSONLine writes m as one line of JSON Lines.
func emitJSONLine(out io.Writer, m proto.Message, extra map[string]any) error {
	b, err := protoJSON(m, extra, false)
	if err != nil {
		return err
	}
	_, err = fmt.Fprintf(out, "%s\n", b)
	return err
}

// writeJSON writes any value as indented JSON.
func writeJSON(out io.Writer, v any) error {
	enc := json.NewEncoder(out)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

func envOr(name, def string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return def
}

func unixTime(s int64) string {
	if s == 0 {
		return "-"
	}
	return time.Unix(s, 0).UTC().Format(time.RFC3339)
}

// describe turns an error into lines a person can act on: the daemon's
// code and message, its request id, and what to do next.
func describe(err error) string {
	var e *client.Error
	if !errors.As(err, &e) {
		return err.Error()
	}
	msg := e.Error()
	if e.RequestID != "" && !strings.Contains(msg, e.RequestID) {
		msg += " (request " + e.RequestID + ")"
	}
	if h := hint(e); h != "" {
		msg += "\n  " + strings.ReplaceAll(h, "\n", "\n  ")
	}
	return msg
}

// hint says what to do about a daemon error, or "".
func hint(e *client.Error) string {
	if l, ok := e.RateLimit(); ok {
		h := fmt.Sprintf("The policy's rate limit %q allows %d requests per %s, then one every %s", l.Name, l.Max, l.Window, l.Interval)
		if e.RetryAfter > 0 {
			h += fmt.Sprintf("; the next is allowed in about %s", e.RetryAfter.Round(time.Second))
		}
		return h + ".\nRate limits are set under rate_limits in the policy file escrowd runs with (its -policy;\n" +
			"make run: .run/pki/policy.yaml). Change the limit there and send escrowd SIGHUP (docs/POLICY.md)."
	}
	if len(e.Violations) > 0 {
		var fs []string
		for _, v := range e.Violations {
			fs = append(fs, v.Field)
		}
		return "The field to fix: " + strings.Join(fs, ", ") + "."
	}
	if r, ok := e.Retired(); ok {
		if r.Kind == "escrow" {
			return fmt.Sprintf("Escrow key version %d of group %s is retired (minimum %d, newest %d): a slot sealed to it\ncan no longer be opened; seal the group's escrow slot to version %d while an allowed version still opens it\n(escrowctl group rewrap-escrow), or lower the minimum (escrowctl group retire).", r.Version, r.Group, r.MinVersion, r.Latest, r.Latest)
		}
		return fmt.Sprintf("Unlock key version %d of group %s is retired (minimum %d, newest %d): issue the user a new\nepoch of codes (escrowctl codes issue), which uses version %d.", r.Version, r.Group, r.MinVersion, r.Latest, r.Latest)
	}
	switch e.Code {
	case client.Unavailable:
		return fmt.Sprintf("Is escrowd running at %s (--addr, $ESCROWD_ADDR)? If it is draining or cannot reach\nVault or its store, try again shortly; its health endpoint and log say which.", dialedAddr)
	case client.PermissionDenied:
		return "escrowd's policy refused this identity this call: check the certificate used (--as, --cert)\nand the identity's roles in the policy file (escrowctl policy check FILE)."
	case client.Unauthenticated:
		return "escrowd did not accept the client certificate: check --cert and --key (or --as), and that\nits CA is one escrowd trusts (-client-ca)."
	case client.DeadlineExceeded:
		return "No answer within --timeout; raise it, or check escrowd's load and health."
	}
	return ""
}

// call runs fn against escrowd with d's connection and timeout.
func (d *daemonFlags) call(cmd *cobra.Command, fn func(ctx context.Context, c *client.Client) error) error {
	ctx, c, done, err := d.dial(cmd.Context())
	if err != nil {
		return err
	}
	defer done()
	return fn(ctx, c)
}
