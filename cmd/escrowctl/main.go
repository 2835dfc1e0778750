// Command escrowctl is the command line of support and security engineers:
// it provisions and inspects groups, reveals unlock codes against a running
// escrowd, and runs the HSM setup ceremony.
package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	escrowdv1 "github.com/escrowd/escrowd/api/escrowd/v1"
	"github.com/escrowd/escrowd/audit"
	"github.com/escrowd/escrowd/daemon"
	"github.com/escrowd/escrowd/escrow/device"
	"github.com/escrowd/escrowd/hsm"
	"github.com/escrowd/escrowd/internal/secret"
	"github.com/escrowd/escrowd/policy"
	"github.com/escrowd/escrowd/softhsm"
)

const usage = `escrowctl talks to escrowd and to the HSM.

Daemon commands (-addr, default $ESCROWD_ADDR or 127.0.0.1:7420) authenticate
with a client certificate: -cert, -key and -ca (or $ESCROWCTL_CERT, _KEY,
_CA), or -as NAME to use NAME.crt, NAME.key and ca.crt in $ESCROWCTL_PKI.
  group provision -group ID [-suite S]       generate a group's keys in the HSM
  group show -group ID                       key versions of a group
  group key -group ID [-format pem|der|jwk]  the group's newest escrow public key:
                                             pem (default): "# " lines naming group,
                                             key version and suite, then a plain
                                             PUBLIC KEY block (PKIX), as OpenSSL reads;
                                             der: the PKIX DER alone on stdout, the
                                             "# " lines on stderr;
                                             jwk: one JSON object, kid GROUP/VERSION,
                                             use enc, alg RSA-OAEP (rsa-oaep-sha1) or
                                             RSA-OAEP-256 (rsa-oaep-sha256), none for
                                             ecdh-p256 (its KDF is not JOSE's), and
                                             "escrowd_suite", the suite: for an EC key
                                             no standard member says how to seal to it
  codes issue -group ID -user U -escrow-slot FILE [-count N] [-out DIR]
                                             start a new unlock-code epoch
  codes reveal -group ID -user U -ticket T   reveal the user's next code
  codes list -group ID -user U               code state, never the codes
  codes pending                              reveals waiting for a second technician
  codes approve -id ID -group ID -user U -ticket T
                                             approve another person's reveal, stating
                                             its group, user and ticket as codes
                                             pending lists them: the daemon refuses
                                             an approval of anything else
  hsm objects                                objects on the daemon's token
  hsm destroy-kek -kek-version N             destroy an old master KEK once no key needs it
  group rotate -group ID [-escrow] [-unlock] add a new key version (default: both)
  group retire -group ID [-min-escrow N] [-min-unlock N]
                                             set minimum decryption versions
  group destroy -group ID -kind escrow|unlock -version N
                                             crypto-shred a retired version
  group rewrap-escrow -group ID -escrow-slot FILE -out FILE
                                             seal an escrow slot to the newest version
  jobs [list] [-watch]                       jobs with a progress bar and an estimate
  jobs start -kind kek-rotation -kek-version N
  jobs start -kind group-rotation [-escrow] [-unlock]
  jobs cancel -id ID
  events [-after N] [-limit N] [-follow]     the event feed (as the sync backend), one
                                             line per event after sequence N (default
                                             0: from the oldest kept) until caught up;
                                             the cursor to go on from goes to stderr;
                                             -follow keeps asking every second

Audit (reads Vault directly: -vault-addr or $VAULT_ADDR, -vault-token-file or
$VAULT_TOKEN, -audit-mount, -audit-prefix):
  audit verify [-expect-head N:HASH] [-token LABEL -pin-file FILE]
                                             walk the whole trail; name every record
                                             changed, deleted, moved, inserted or
                                             forged (MACs checked with the HSM), a
                                             truncation before the expected head, and
                                             every intent without an outcome
  audit checkpoint [-token LABEL -pin-file FILE]
                                             print the head N:HASH of an intact trail,
                                             to keep outside Vault; with the HSM signed
                                             under the chain key: N:HASH:AT:MAC
  audit read [-n N]                          print the last N records (default 20)

Offline:
  policy check FILE                          validate a policy file

HSM ceremony (runs against the token directly):
  hsm init -module PATH -token LABEL -so-pin-file FILE -pin-file FILE
           [-kek-label L] [-kek-version N]
                                             create master KEK version N (default 1;
                                             N+1 to start a rotation): one private,
                                             trusted KEK per key class; needs the SO
                                             PIN and the user PIN ($ESCROWD_SO_PIN,
                                             $ESCROWD_HSM_PIN)

Development (for trying escrowd out; never for production):
  dev token -dir DIR -token LABEL            create or reuse a SoftHSM token with
                                             its master KEK; prints the module path
  dev pki -dir DIR                           a CA, a server certificate, certificates
                                             for sync-backend, alice, bob (support) and
                                             carol (security), and a matching policy
  dev seal-escrow -group ID -out FILE [-gdk-out FILE]
                                             wrap a fresh group data key to the
                                             group's escrow key
`

func main() {
	if err := run(os.Args[1:], os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "escrowctl:", describe(err))
		os.Exit(exitCode(err))
	}
}

// exitCode is 2 for a usage error, 1 for any other.
func exitCode(err error) int {
	if errors.Is(err, errUsage) {
		return 2
	}
	return 1
}

// describe turns a gRPC status into a line a person can act on.
func describe(err error) string {
	if st, ok := status.FromError(err); ok {
		return fmt.Sprintf("%s: %s", st.Code(), st.Message())
	}
	return err.Error()
}

var (
	errUsage    = errors.New("usage")
	errTampered = errors.New("the audit trail does not verify")
)

func run(args []string, out io.Writer) error {
	if len(args) >= 1 && (args[0] == "jobs" || args[0] == "events") && (len(args) == 1 || strings.HasPrefix(args[1], "-")) {
		args = append([]string{args[0], "list"}, args[1:]...)
	}
	if len(args) < 2 {
		fmt.Fprint(os.Stderr, usage)
		return errUsage
	}
	cmd := args[0] + " " + args[1]
	fs := flag.NewFlagSet("escrowctl "+cmd, flag.ContinueOnError)
	addr := fs.String("addr", envOr("ESCROWD_ADDR", "127.0.0.1:7420"), "escrowd address")
	timeout := fs.Duration("timeout", 0, "request timeout (default 30s; 15m for codes reveal, which may wait for a second technician)")
	group := fs.String("group", "", "group id")
	user := fs.String("user", "", "user id")
	ticket := fs.String("ticket", "", "support ticket reference")
	suite := fs.String("suite", "", "escrow key suite (default: the daemon's)")
	slotFile := fs.String("escrow-slot", "", "file holding the group's escrow slot")
	count := fs.Uint("count", 0, "number of codes (default: the daemon's)")
	outPath := fs.String("out", "", "output file or folder")
	gdkOut := fs.String("gdk-out", "", "where to write the group data key (dev only)")
	module := fs.String("module", "/usr/lib/softhsm/libsofthsm2.so", "PKCS#11 module")
	token := fs.String("token", "", "HSM token label")
	soPINFile := fs.String("so-pin-file", "", "file holding the security officer PIN (else $ESCROWD_SO_PIN)")
	pinFile := fs.String("pin-file", "", "file holding the HSM user PIN (else $ESCROWD_HSM_PIN)")
	kekLabel := fs.String("kek-label", "escrowd-kek", "master KEK label")
	dir := fs.String("dir", "", "folder of the development token or PKI")
	certFile := fs.String("cert", os.Getenv("ESCROWCTL_CERT"), "client certificate, PEM")
	keyFile := fs.String("key", os.Getenv("ESCROWCTL_KEY"), "client key, PEM")
	caFile := fs.String("ca", os.Getenv("ESCROWCTL_CA"), "CA that signs the server certificate, PEM")
	as := fs.String("as", "", "use NAME.crt, NAME.key and ca.crt from $ESCROWCTL_PKI")
	id := fs.String("id", "", "pending reveal id, or job id")
	approvalID, jobID := id, id
	last := fs.Int("n", 20, "number of records")
	policyFile := fs.String("policy", "", "policy file")
	vaultAddr := fs.String("vault-addr", os.Getenv("VAULT_ADDR"), "Vault address")
	vaultTokenFile := fs.String("vault-token-file", "", "file holding a Vault token (else $VAULT_TOKEN)")
	auditMount := fs.String("audit-mount", "secret", "KV v2 mount of the audit trail")
	auditPrefix := fs.String("audit-prefix", "escrowd/audit", "folder of the audit trail")
	kekVersion := fs.Uint("kek-version", 0, "master KEK version")
	rotEscrow := fs.Bool("escrow", false, "the escrow key")
	rotUnlock := fs.Bool("unlock", false, "the unlock key")
	minEscrow := fs.Uint("min-escrow", 0, "minimum escrow key decryption version")
	minUnlock := fs.Uint("min-unlock", 0, "minimum unlock key decryption version")
	kind := fs.String("kind", "", "key kind (escrow, unlock) or job kind (kek-rotation, group-rotation)")
	version := fs.Uint("version", 0, "key version")
	watch := fs.Bool("watch", false, "refresh until every job has ended")
	format := fs.String("format", string(formatPEM), "group key output: pem, der or jwk")
	after := fs.Uint64("after", 0, "events after this sequence number (0: from the oldest kept)")
	limit := fs.Uint("limit", 0, "events per request (default: the daemon's, 100; at most 1000)")
	follow := fs.Bool("follow", false, "keep asking for new events until interrupted")
	expectHead := fs.String("expect-head", "", "audit verify: a head N:HASH[:AT:MAC] from audit checkpoint that the trail must still hold")
	if err := fs.Parse(args[2:]); err != nil {
		return err
	}
	keyFmt := formatPEM
	if cmd == "group key" {
		f, err := parseKeyFormat(*format)
		if err != nil {
			return err
		}
		keyFmt = f
	}
	if *timeout == 0 {
		*timeout = 30 * time.Second
		if cmd == "codes reveal" {
			*timeout = 15 * time.Minute
		}
	}
	need := func(names ...string) error {
		for _, n := range names {
			if fs.Lookup(n).Value.String() == "" {
				return fmt.Errorf("%s: -%s is required", cmd, n)
			}
		}
		return nil
	}

	if cmd == "dev token" {
		if err := need("dir", "token"); err != nil {
			return err
		}
		t, err := softhsm.New(*dir, *token)
		if err != nil {
			return err
		}
		// A token made before master KEKs were private holds its KEK in
		// clear: say how to get out of it before escrowd refuses it.
		h, err := hsm.Open(t.HSMConfig())
		if errors.Is(err, hsm.ErrKEKPublic) {
			return fmt.Errorf("the development token in %s has a public master KEK (made before KEKs were private): delete %s and the store it served (make run: .run/softhsm and .run/escrowd.db), or migrate it (docs/LIFECYCLE.md)", *dir, *dir)
		}
		if err != nil {
			return err
		}
		h.Close()
		// The module path, for the caller's -hsm-module.
		fmt.Fprintln(out, t.Module)
		return nil
	}

	switch cmd {
	case "dev pki":
		if err := need("dir"); err != nil {
			return err
		}
		return devPKI(*dir, out)
	case "policy check":
		if *policyFile == "" && fs.NArg() == 1 {
			*policyFile = fs.Arg(0)
		}
		if err := need("policy"); err != nil {
			return err
		}
		b, err := os.ReadFile(*policyFile)
		if err != nil {
			return err
		}
		if _, err := policy.Parse(*policyFile, b, daemon.Operations()); err != nil {
			return err
		}
		fmt.Fprintf(out, "%s: ok\n", *policyFile)
		return nil
	case "audit verify", "audit read", "audit checkpoint":
		tok, err := secret.Load("Vault token", *vaultTokenFile, "VAULT_TOKEN")
		if err != nil {
			return err
		}
		if cmd != "audit read" {
			return auditCommand(cmd, auditOptions{vault: audit.VaultConfig{Address: *vaultAddr, Token: tok, Mount: *auditMount, Prefix: *auditPrefix},
				module: *module, token: *token, pinFile: *pinFile, kekLabel: *kekLabel, expectHead: *expectHead, timeout: *timeout}, out)
		}
		v, err := audit.NewVault(audit.VaultConfig{Address: *vaultAddr, Token: tok, Mount: *auditMount, Prefix: *auditPrefix})
		if err != nil {
			return err
		}
		defer v.Close()
		ctx, cancel := context.WithTimeout(context.Background(), *timeout)
		defer cancel()
		return auditRead(ctx, v, *last, out)
	}

	if cmd == "hsm init" {
		if err := need("module", "token"); err != nil {
			return err
		}
		so, err := secret.Load("SO PIN", *soPINFile, "ESCROWD_SO_PIN")
		if err != nil {
			return err
		}
		// The user PIN too: the SO makes the trusted KEK, the user copies
		// it into a private object, which the token encrypts at rest.
		userPIN, err := secret.Load("HSM user PIN", *pinFile, "ESCROWD_HSM_PIN")
		if err != nil {
			return err
		}
		v := uint32(*kekVersion)
		if v == 0 {
			v = hsm.CurrentKEKVersion
		}
		rep, err := hsm.InitKEKVersion(*module, *token, so, userPIN, *kekLabel, v)
		if err != nil {
			return err
		}
		fmt.Fprintf(out, "master KEK version %d created on token %q: one private, trusted KEK per key class (%s); unwrap templates enforced\n",
			v, *token, strings.Join(rep.Labels, ", "))
		if !rep.AllowedMechanisms {
			fmt.Fprintln(out, "WARNING: the module refused CKA_ALLOWED_MECHANISMS: the KEKs and the keys unwrapped under them are not limited to one mechanism each (docs/HSM.md)")
		}
		if v > 1 {
			fmt.Fprintf(out, "new keys stay under the current KEK until: escrowctl jobs start -kind kek-rotation -kek-version %d\n", v)
		}
		return nil
	}

	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()
	if *as != "" {
		pki := os.Getenv("ESCROWCTL_PKI")
		if pki == "" {
			return errors.New("-as needs $ESCROWCTL_PKI, the folder of the certificates")
		}
		*certFile, *keyFile, *caFile = filepath.Join(pki, *as+".crt"), filepath.Join(pki, *as+".key"), filepath.Join(pki, "ca.crt")
	}
	creds, err := clientTLS(*certFile, *keyFile, *caFile)
	if err != nil {
		return err
	}
	conn, err := grpc.NewClient(*addr, grpc.WithTransportCredentials(creds))
	if err != nil {
		return err
	}
	defer conn.Close()
	sync := escrowdv1.NewSyncServiceClient(conn)
	support := escrowdv1.NewSupportServiceClient(conn)
	security := escrowdv1.NewSecurityServiceClient(conn)
	var hdr metadata.MD
	withID := grpc.Header(&hdr)
	requestID := func() string {
		if v := hdr.Get("x-request-id"); len(v) > 0 {
			return v[0]
		}
		return "-"
	}

	switch cmd {
	case "group provision":
		if err := need("group"); err != nil {
			return err
		}
		r, err := sync.ProvisionGroup(ctx, &escrowdv1.ProvisionGroupRequest{GroupId: *group, Suite: *suite}, withID)
		if err != nil {
			return err
		}
		k := r.GetEscrowKey()
		fmt.Fprintf(out, "group %s provisioned: escrow key v%d (%s), request %s\n", k.GetGroupId(), k.GetVersion(), k.GetSuite(), requestID())
	case "group show":
		if err := need("group"); err != nil {
			return err
		}
		r, err := security.GetGroup(ctx, &escrowdv1.GetGroupRequest{GroupId: *group}, withID)
		if err != nil {
			return err
		}
		fmt.Fprintf(out, "group %s, created %s\n", r.GetGroupId(), time.Unix(r.GetCreatedUnix(), 0).UTC().Format(time.RFC3339))
		for _, k := range r.GetEscrowKeys() {
			fmt.Fprintf(out, "  escrow v%d  %-16s kek v%d  %s\n", k.GetVersion(), k.GetSuite(), k.GetKekVersion(), time.Unix(k.GetCreatedUnix(), 0).UTC().Format(time.RFC3339))
		}
		for _, k := range r.GetUnlockKeys() {
			fmt.Fprintf(out, "  unlock v%d  %-16s kek v%d  %s\n", k.GetVersion(), k.GetSuite(), k.GetKekVersion(), time.Unix(k.GetCreatedUnix(), 0).UTC().Format(time.RFC3339))
		}
	case "group key":
		if err := need("group"); err != nil {
			return err
		}
		r, err := sync.GetEscrowKey(ctx, &escrowdv1.GetEscrowKeyRequest{GroupId: *group})
		if err != nil {
			return err
		}
		k := r.GetEscrowKey()
		g := k.GetGroupId()
		if g == "" {
			g = *group
		}
		return writeEscrowKey(out, os.Stderr, escrowPublicKey{Group: g, Version: k.GetVersion(), Suite: k.GetSuite(), DER: k.GetPublicKey()}, keyFmt)
	case "codes issue":
		if err := need("group", "user", "escrow-slot"); err != nil {
			return err
		}
		slot, err := os.ReadFile(*slotFile)
		if err != nil {
			return err
		}
		r, err := sync.IssueUnlockCodes(ctx, &escrowdv1.IssueUnlockCodesRequest{
			GroupId: *group, UserId: *user, EscrowSlot: slot, Count: uint32(*count)}, withID)
		if err != nil {
			return err
		}
		fmt.Fprintf(out, "epoch %d: %d unlock slots, request %s\n", r.GetEpoch(), len(r.GetSlots()), requestID())
		if *outPath != "" {
			if err := os.MkdirAll(*outPath, 0o700); err != nil {
				return err
			}
			for i, s := range r.GetSlots() {
				p := fmt.Sprintf("%s/unlock-%d-%d.json", strings.TrimRight(*outPath, "/"), r.GetEpoch(), i)
				if err := os.WriteFile(p, s, 0o600); err != nil {
					return err
				}
				fmt.Fprintln(out, "  wrote", p)
			}
		}
	case "codes reveal":
		if err := need("group", "user", "ticket"); err != nil {
			return err
		}
		fmt.Fprintln(os.Stderr, "revealing; a group under dual control waits here for a second technician's approval")
		r, err := support.RevealUnlockCode(ctx, &escrowdv1.RevealUnlockCodeRequest{GroupId: *group, UserId: *user, Ticket: *ticket}, withID)
		if err != nil {
			return err
		}
		fmt.Fprintf(out, "unlock code %d of epoch %d for %s: %s\n(%d left; request %s)\n",
			r.GetIndex(), r.GetEpoch(), *user, r.GetCode(), r.GetRemaining(), requestID())
		if a := r.GetApprovedBy(); a != "" {
			fmt.Fprintf(out, "approved by %s\n", a)
		}
	case "codes list":
		if err := need("group", "user"); err != nil {
			return err
		}
		r, err := support.ListUnlockCodes(ctx, &escrowdv1.ListUnlockCodesRequest{GroupId: *group, UserId: *user})
		if err != nil {
			return err
		}
		fmt.Fprintf(out, "epoch %d\n", r.GetEpoch())
		for _, c := range r.GetCodes() {
			fmt.Fprintf(out, "  code %d  %s\n", c.GetIndex(), strings.ToLower(strings.TrimPrefix(c.GetState().String(), "STATE_")))
		}
	case "codes pending":
		r, err := support.ListPendingReveals(ctx, &escrowdv1.ListPendingRevealsRequest{})
		if err != nil {
			return err
		}
		if len(r.GetReveals()) == 0 {
			fmt.Fprintln(out, "no reveal is waiting for approval")
		}
		for _, p := range r.GetReveals() {
			fmt.Fprintf(out, "%s  group %s user %s ticket %s, asked by %s, expires %s\n", p.GetId(), p.GetGroupId(), p.GetUserId(),
				p.GetTicket(), p.GetRequester(), time.Unix(p.GetExpiresUnix(), 0).UTC().Format(time.RFC3339))
		}
	case "codes approve":
		if err := need("id", "group", "user", "ticket"); err != nil {
			return err
		}
		r, err := support.ApproveReveal(ctx, &escrowdv1.ApproveRevealRequest{Id: *approvalID, GroupId: *group, UserId: *user, Ticket: *ticket}, withID)
		if err != nil {
			return err
		}
		p := r.GetReveal()
		fmt.Fprintf(out, "approved: %s may now reveal a code of %s in group %s (ticket %s); request %s\n",
			p.GetRequester(), p.GetUserId(), p.GetGroupId(), p.GetTicket(), requestID())
	case "group rotate":
		if err := need("group"); err != nil {
			return err
		}
		e, u := *rotEscrow, *rotUnlock
		if !e && !u {
			e, u = true, true
		}
		r, err := security.RotateGroupKeys(ctx, &escrowdv1.RotateGroupKeysRequest{GroupId: *group, Escrow: e, Unlock: u}, withID)
		if err != nil {
			return err
		}
		printGroup(out, r.GetGroup())
	case "group retire":
		if err := need("group"); err != nil {
			return err
		}
		r, err := security.SetMinDecryptionVersion(ctx, &escrowdv1.SetMinDecryptionVersionRequest{
			GroupId: *group, MinEscrowVersion: uint32(*minEscrow), MinUnlockVersion: uint32(*minUnlock)}, withID)
		if err != nil {
			return err
		}
		printGroup(out, r.GetGroup())
	case "group destroy":
		if err := need("group", "kind", "version"); err != nil {
			return err
		}
		r, err := security.DestroyKeyVersion(ctx, &escrowdv1.DestroyKeyVersionRequest{GroupId: *group, Kind: *kind, Version: uint32(*version)}, withID)
		if err != nil {
			return err
		}
		printGroup(out, r.GetGroup())
	case "group rewrap-escrow":
		if err := need("group", "escrow-slot", "out"); err != nil {
			return err
		}
		slot, err := os.ReadFile(*slotFile)
		if err != nil {
			return err
		}
		r, err := sync.RewrapToEscrow(ctx, &escrowdv1.RewrapToEscrowRequest{GroupId: *group, EscrowSlot: slot}, withID)
		if err != nil {
			return err
		}
		if err := os.WriteFile(*outPath, r.GetSlot(), 0o600); err != nil {
			return err
		}
		fmt.Fprintf(out, "wrote an escrow slot sealed to the newest escrow key to %s (request %s)\n", *outPath, requestID())
	case "hsm destroy-kek":
		if err := need("kek-version"); err != nil {
			return err
		}
		if _, err := security.DestroyKEK(ctx, &escrowdv1.DestroyKEKRequest{Version: uint32(*kekVersion)}, withID); err != nil {
			return err
		}
		fmt.Fprintf(out, "master KEK version %d destroyed (request %s)\n", *kekVersion, requestID())
	case "jobs start":
		if err := need("kind"); err != nil {
			return err
		}
		params := map[string]string{}
		switch *kind {
		case "kek-rotation":
			params["to"] = fmt.Sprint(*kekVersion)
		case "group-rotation":
			e, u := *rotEscrow, *rotUnlock
			if !e && !u {
				e, u = true, true
			}
			params["escrow"], params["unlock"] = fmt.Sprint(e), fmt.Sprint(u)
		}
		r, err := security.StartJob(ctx, &escrowdv1.StartJobRequest{Kind: *kind, Params: params}, withID)
		if err != nil {
			return err
		}
		fmt.Fprintf(out, "job %s started (%d groups)\n", r.GetJob().GetId(), r.GetJob().GetTotal())
	case "jobs cancel":
		if err := need("id"); err != nil {
			return err
		}
		r, err := security.CancelJob(ctx, &escrowdv1.CancelJobRequest{Id: *jobID}, withID)
		if err != nil {
			return err
		}
		fmt.Fprintf(out, "job %s %s\n", r.GetJob().GetId(), r.GetJob().GetState())
	case "jobs list":
		for {
			r, err := security.ListJobs(ctx, &escrowdv1.ListJobsRequest{})
			if err != nil {
				return err
			}
			running := false
			for _, j := range r.GetJobs() {
				fmt.Fprintln(out, jobLine(j, time.Now()))
				running = running || j.GetState() == "running"
			}
			if len(r.GetJobs()) == 0 {
				fmt.Fprintln(out, "no jobs")
			}
			if !*watch || !running {
				return nil
			}
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(time.Second):
			}
			fmt.Fprintln(out)
		}
	case "events list":
		fctx := ctx
		if *follow {
			// No overall deadline: each request has its own, until ^C.
			var stop context.CancelFunc
			fctx, stop = signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
			defer stop()
		}
		return listEvents(fctx, sync, *after, uint32(*limit), *follow, *timeout, out, os.Stderr)
	case "hsm objects":
		r, err := security.ListHSMObjects(ctx, &escrowdv1.ListHSMObjectsRequest{})
		if err != nil {
			return err
		}
		enc := json.NewEncoder(out)
		enc.SetIndent("", "  ")
		return enc.Encode(r.GetObjects())
	case "dev seal-escrow":
		if err := need("group", "out"); err != nil {
			return err
		}
		r, err := sync.GetEscrowKey(ctx, &escrowdv1.GetEscrowKeyRequest{GroupId: *group})
		if err != nil {
			return err
		}
		k := r.GetEscrowKey()
		gdk, err := device.NewGDK()
		if err != nil {
			return err
		}
		defer clear(gdk)
		slot, err := device.SealEscrow(k.GetPublicKey(), device.To{Group: *group, GDKVersion: 1, KeyVersion: k.GetVersion()}, k.GetSuite(), gdk)
		if err != nil {
			return err
		}
		if err := os.WriteFile(*outPath, slot, 0o600); err != nil {
			return err
		}
		if *gdkOut != "" {
			if err := os.WriteFile(*gdkOut, gdk, 0o600); err != nil {
				return err
			}
		}
		fmt.Fprintf(out, "wrote an escrow slot (escrow key v%d) to %s\n", k.GetVersion(), *outPath)
	default:
		fmt.Fprint(os.Stderr, usage)
		return fmt.Errorf("unknown command %q", cmd)
	}
	return nil
}

func envOr(name, def string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return def
}

// clientTLS makes mutual TLS credentials from PEM files.
func clientTLS(certFile, keyFile, caFile string) (credentials.TransportCredentials, error) {
	if certFile == "" || keyFile == "" || caFile == "" {
		return nil, errors.New("a client certificate is required: -cert, -key and -ca, or -as NAME with $ESCROWCTL_PKI")
	}
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return nil, fmt.Errorf("failed to load the client certificate: %w", err)
	}
	caPEM, err := os.ReadFile(caFile)
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		return nil, fmt.Errorf("%s holds no PEM certificate", caFile)
	}
	return credentials.NewTLS(&tls.Config{Certificates: []tls.Certificate{cert}, RootCAs: pool, MinVersion: tls.VersionTLS13}), nil
}

func auditRead(ctx context.Context, v *audit.Vault, n int, out io.Writer) error {
	var recs []audit.Chained
	err := v.Walk(ctx, func(_ uint64, b *audit.Batch) error {
		if b != nil {
			recs = append(recs, b.Records...)
			if len(recs) > n {
				recs = recs[len(recs)-n:]
			}
		}
		return nil
	})
	if err != nil {
		return err
	}
	enc := json.NewEncoder(out)
	for _, r := range recs {
		if err := enc.Encode(r); err != nil {
			return err
		}
	}
	return nil
}

func printGroup(out io.Writer, g *escrowdv1.GetGroupResponse) {
	fmt.Fprintf(out, "group %s: min escrow version %d, min unlock version %d\n", g.GetGroupId(), g.GetMinEscrowVersion(), g.GetMinUnlockVersion())
	for _, set := range []struct {
		name string
		ks   []*escrowdv1.KeyVersion
	}{{"escrow", g.GetEscrowKeys()}, {"unlock", g.GetUnlockKeys()}} {
		for _, k := range set.ks {
			state := "live"
			if k.GetDestroyedUnix() != 0 {
				state = "destroyed " + time.Unix(k.GetDestroyedUnix(), 0).UTC().Format(time.RFC3339)
			}
			fmt.Fprintf(out, "  %s v%d  %-16s kek v%d  %s\n", set.name, k.GetVersion(), k.GetSuite(), k.GetKekVersion(), state)
		}
	}
}

// jobLine renders a job: id, kind, state, a progress bar of the current
// pass and an estimate of the time left at the current owner's rate.
func jobLine(j *escrowdv1.Job, now time.Time) string {
	const width = 30
	frac := 0.0
	if j.GetTotal() > 0 {
		frac = min(1, float64(j.GetDone())/float64(j.GetTotal()))
	}
	if j.GetState() == "done" {
		frac = 1
	}
	n := int(frac * width)
	bar := strings.Repeat("#", n) + strings.Repeat(".", width-n)
	eta := "-"
	if j.GetState() == "running" && j.GetRunStartedUnix() > 0 {
		elapsed := now.Sub(time.Unix(j.GetRunStartedUnix(), 0)).Seconds()
		did := j.GetDone() - j.GetRunDone()
		if did > 0 && elapsed > 0 {
			left := float64(j.GetTotal()-j.GetDone()) / (float64(did) / elapsed)
			eta = (time.Duration(max(0, left)) * time.Second).String()
		}
	}
	line := fmt.Sprintf("%s  %-14s %-8s pass %d [%s] %5.1f%% %d/%d changed %d  eta %s",
		j.GetId(), j.GetKind(), j.GetState(), j.GetPass(), bar, 100*frac, j.GetDone(), j.GetTotal(), j.GetChanged(), eta)
	if j.GetOwner() != "" && j.GetState() == "running" {
		line += "  on " + j.GetOwner()
	}
	if j.GetError() != "" {
		line += "\n    error: " + j.GetError()
	}
	return line
}
