package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/protobuf/encoding/protojson"

	escrowdv1 "github.com/escrowd/escrowd/api/escrowd/v1"
	"github.com/escrowd/escrowd/client"
)

const recipientHelp = `A recipient is written kind=member|device,id=ID,version=N,suite=S,key=FILE:
the kind of slot, the caller's name for the account or device (copied into the
slot), the version of its key, its suite (ecdh-p256, rsa-oaep-sha1,
rsa-oaep-sha256) and a file holding its public key (PKIX, PEM or DER).`

// parseRecipient reads a recipient written as recipientHelp says.
func parseRecipient(spec string) (*escrowdv1.Recipient, error) {
	bad := func(format string, args ...any) error {
		return usageError{fmt.Sprintf("recipient %q: %s", spec, fmt.Sprintf(format, args...))}
	}
	r := &escrowdv1.Recipient{}
	seen := map[string]bool{}
	for _, part := range strings.Split(spec, ",") {
		k, v, ok := strings.Cut(part, "=")
		if !ok || v == "" {
			return nil, bad("%q is not key=value", part)
		}
		if seen[k] {
			return nil, bad("%s given twice", k)
		}
		seen[k] = true
		switch k {
		case "kind":
			switch v {
			case "member":
				r.Kind = escrowdv1.Recipient_KIND_MEMBER
			case "device":
				r.Kind = escrowdv1.Recipient_KIND_DEVICE
			default:
				return nil, bad("kind %q: member or device", v)
			}
		case "id":
			r.Id = v
		case "version":
			n, err := strconv.ParseUint(v, 10, 32)
			if err != nil {
				return nil, bad("version %q is not a number", v)
			}
			r.KeyVersion = uint32(n)
		case "suite":
			r.Suite = v
		case "key":
			b, err := readPublicKey(v)
			if err != nil {
				return nil, bad("%v", err)
			}
			r.PublicKey = b
		default:
			return nil, bad("unknown key %q (kind, id, version, suite, key)", k)
		}
	}
	for _, k := range []string{"kind", "id", "version", "suite", "key"} {
		if !seen[k] {
			return nil, bad("%s is missing", k)
		}
	}
	return r, nil
}

// readPublicKey reads a PKIX public key from a PEM or DER file.
func readPublicKey(path string) ([]byte, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	if blk, _ := pem.Decode(b); blk != nil {
		if blk.Type != "PUBLIC KEY" {
			return nil, fmt.Errorf("%s holds a %s block, not a PUBLIC KEY", path, blk.Type)
		}
		return blk.Bytes, nil
	}
	if bytes.HasPrefix(bytes.TrimSpace(b), []byte("-----")) {
		return nil, fmt.Errorf("%s is not a readable PEM file", path)
	}
	return b, nil
}

func rewrapCmd(a *app) *cobra.Command {
	var group, slotFile, recipient, outFile string
	c := &cobra.Command{
		Use:   "rewrap --group ID --escrow-slot FILE --recipient SPEC --out FILE",
		Short: "Wrap a group's data key from its escrow slot to a member or device key (SyncService.Rewrap)",
		Long: `Open an escrow slot inside the HSM and wrap the group data key it holds to a
member or device public key; the data key's clear value never leaves the HSM.

` + recipientHelp,
		Args: cobra.NoArgs,
	}
	d := daemonCmd(c, 30*time.Second)
	o := addOutput(c)
	c.Flags().StringVar(&group, "group", "", "group id")
	c.Flags().StringVar(&slotFile, "escrow-slot", "", "file holding the group's escrow slot")
	c.Flags().StringVar(&recipient, "recipient", "", "the member or device to wrap to")
	c.Flags().StringVar(&outFile, "out", "", "where to write the new slot")
	c.MarkFlagFilename("escrow-slot", "json")
	c.RunE = func(cmd *cobra.Command, _ []string) error {
		if err := firstErr(o.check(), required(cmd, "group", "escrow-slot", "recipient", "out")); err != nil {
			return err
		}
		r, err := parseRecipient(recipient)
		if err != nil {
			return err
		}
		slot, err := os.ReadFile(slotFile)
		if err != nil {
			return err
		}
		return d.call(cmd, func(ctx context.Context, cl *client.Client) error {
			var id string
			resp, err := cl.Rewrap(ctx, &escrowdv1.RewrapRequest{GroupId: group, EscrowSlot: slot, Recipient: r}, client.RequestID(&id))
			if err != nil {
				return err
			}
			if err := os.WriteFile(outFile, resp.GetSlot(), 0o600); err != nil {
				return err
			}
			if o.json() {
				return writeJSON(a.out, map[string]any{"out": outFile, "request_id": id})
			}
			fmt.Fprintf(a.out, "wrote a %s slot for %s to %s (request %s)\n", strings.ToLower(strings.TrimPrefix(r.GetKind().String(), "KIND_")), r.GetId(), outFile, id)
			return nil
		})
	}
	return c
}

// batchMax is the most items BatchRewrap takes in one call.
const batchMax = 256

func batchRewrapCmd(a *app) *cobra.Command {
	var inFile, outDir string
	c := &cobra.Command{
		Use:   "batch-rewrap --in FILE.jsonl [--out DIR]",
		Short: "Run many re-wraps from a JSON Lines file (SyncService.BatchRewrap)",
		Long: `Run the re-wraps of a JSON Lines file: one BatchRewrapItem per line, in the
API's JSON mapping (bytes as base64), for example

  {"reference":"dev-7","group_id":"family-1","escrow_slot":"eyJ2Ij…","recipient":{"kind":"KIND_DEVICE","id":"dev-7","key_version":1,"suite":"ecdh-p256","public_key":"MFkw…"}}
  {"reference":"esc-1","group_id":"family-1","escrow_slot":"eyJ2Ij…","escrow":{}}

Files of more than 256 items go in calls of 256. Each item gets its own
result: with --out, each new slot is written to DIR/item-N.json (N counts
lines from 0). An item's failure does not stop the others; escrowctl exits 1
if any failed, naming them. "-" reads standard input.`,
		Args: cobra.NoArgs,
	}
	d := daemonCmd(c, 5*time.Minute)
	o := addOutput(c)
	c.Flags().StringVar(&inFile, "in", "", "JSON Lines file of items, - for standard input")
	c.Flags().StringVar(&outDir, "out", "", "folder for the new slots")
	c.MarkFlagFilename("in", "jsonl", "json")
	c.MarkFlagDirname("out")
	c.RunE = func(cmd *cobra.Command, _ []string) error {
		if err := firstErr(o.check(), required(cmd, "in")); err != nil {
			return err
		}
		items, err := readBatch(inFile)
		if err != nil {
			return err
		}
		if outDir != "" {
			if err := os.MkdirAll(outDir, 0o700); err != nil {
				return err
			}
		}
		return d.call(cmd, func(ctx context.Context, cl *client.Client) error {
			var failed []error
			for start := 0; start < len(items); start += batchMax {
				chunk := items[start:min(start+batchMax, len(items))]
				var id string
				resp, err := cl.BatchRewrap(ctx, &escrowdv1.BatchRewrapRequest{Items: chunk}, client.RequestID(&id))
				if err != nil {
					return fmt.Errorf("items %d to %d: %w", start, start+len(chunk)-1, err)
				}
				for _, e := range client.BatchErrors(resp) {
					var be *client.BatchItemError
					if errors.As(e, &be) {
						be.Index += start
					}
					failed = append(failed, e)
				}
				for i, r := range resp.GetResults() {
					n := start + i
					file := ""
					if outDir != "" && r.GetError() == nil {
						file = filepath.Join(outDir, fmt.Sprintf("item-%d.json", n))
						if err := os.WriteFile(file, r.GetSlot(), 0o600); err != nil {
							return err
						}
					}
					if o.json() {
						extra := map[string]any{"index": n, "request_id": id}
						if file != "" {
							extra["out"] = file
						}
						if err := emitJSONLine(a.out, r, extra); err != nil {
							return err
						}
						continue
					}
					switch e := r.GetError(); {
					case e != nil:
						fmt.Fprintf(a.out, "item %d %s: %s: %s\n", n, r.GetReference(), client.Code(e.GetCode()), e.GetMessage())
					case file != "":
						fmt.Fprintf(a.out, "item %d %s: ok, wrote %s\n", n, r.GetReference(), file)
					default:
						fmt.Fprintf(a.out, "item %d %s: ok (%d bytes; --out DIR writes the slots)\n", n, r.GetReference(), len(r.GetSlot()))
					}
				}
			}
			if len(failed) > 0 {
				return fmt.Errorf("%d of %d items failed: %w", len(failed), len(items), errors.Join(failed...))
			}
			return nil
		})
	}
	return c
}

// readBatch reads a JSON Lines file of BatchRewrapItems; a bad line is an
// error naming it, before anything is sent.
func readBatch(path string) ([]*escrowdv1.BatchRewrapItem, error) {
	f := os.Stdin
	if path != "-" {
		var err error
		if f, err = os.Open(path); err != nil {
			return nil, err
		}
		defer f.Close()
	}
	var items []*escrowdv1.BatchRewrapItem
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 0, 64<<10), 16<<20)
	for n := 1; sc.Scan(); n++ {
		line := bytes.TrimSpace(sc.Bytes())
		if len(line) == 0 || line[0] == '#' {
			continue
		}
		it := &escrowdv1.BatchRewrapItem{}
		if err := protojson.Unmarshal(line, it); err != nil {
			return nil, usageError{fmt.Sprintf("%s:%d: not a BatchRewrapItem: %v", path, n, err)}
		}
		items = append(items, it)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	if len(items) == 0 {
		return nil, usageError{fmt.Sprintf("%s holds no items", path)}
	}
	return items, nil
}
