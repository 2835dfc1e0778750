package pwa_test

import (
	"encoding/json"
	"os/exec"
	"path/filepath"
	"testing"
)

// TestResponseDecoders runs the app's decoders of the sync backend's
// answers in node: the vectors of testdata/responses.json, then a seeded
// mutation fuzzer (FUZZ_ITERATIONS, FUZZ_SEED in the environment).
func TestResponseDecoders(t *testing.T) {
	script := bundleForNode(t, "test/decode_node.ts")
	out, err := exec.Command(nodePath(t), script, "testdata/responses.json").Output()
	if err != nil {
		t.Fatalf("node: %v", err)
	}
	var got struct {
		Valid, Invalid, Accepted, Refused int
		Failures                          []string
	}
	if err := json.Unmarshal(out, &got); err != nil {
		t.Fatalf("node's output %s: %v", out, err)
	}
	for _, f := range got.Failures {
		t.Error(f)
	}
	if got.Valid < 5 || got.Invalid < 20 || got.Refused == 0 || got.Accepted == 0 {
		t.Errorf("ran %d valid and %d invalid vectors; the fuzzer had %d answers accepted and %d refused", got.Valid, got.Invalid, got.Accepted, got.Refused)
	}
	t.Logf("fuzzer: %d mutated answers accepted, %d refused", got.Accepted, got.Refused)
}

func nodePath(t *testing.T) string {
	t.Helper()
	node, err := exec.LookPath("node")
	if err != nil {
		t.Fatal("node is not installed: run `make deps`")
	}
	return node
}

// bundleForNode bundles a test script and the app code it imports for node.
func bundleForNode(t *testing.T, entry string) string {
	t.Helper()
	esbuild, err := filepath.Abs("../../clients/web/node_modules/.bin/esbuild")
	if err != nil {
		t.Fatal(err)
	}
	script := filepath.Join(t.TempDir(), filepath.Base(entry)+".mjs")
	if out, err := exec.Command(esbuild, entry, "--bundle", "--platform=node", "--format=esm", "--log-level=warning", "--outfile="+script).CombinedOutput(); err != nil {
		t.Fatalf("esbuild (run `npm ci --prefix clients/web` if it is missing): %v\n%s", err, out)
	}
	return script
}
