package bench

import (
	"encoding/json"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"
)

// Row is one measured line of the table.
type Row struct {
	// Section says what was measured: "raw ceiling", "escrowd, 1,000
	// groups", "Vault Transit", ...
	Section string `json:"section"`
	Op      string `json:"op"`
	// Conc is the number of sessions (raw ceiling) or of concurrent
	// callers; for an open-loop row, the rate asked for is in Note.
	Conc int `json:"concurrency"`
	Stats
	// CPU of the escrowd process in percent of one core; -1: not measured.
	CPU float64 `json:"escrowd_cpu_pct"`
	// VaultCPU is the Vault server's CPU likewise.
	VaultCPU float64 `json:"vault_cpu_pct"`
	Note     string  `json:"note,omitempty"`
}

// Report is one run of `make bench`.
type Report struct {
	Date    string            `json:"date"`
	Commit  string            `json:"commit"`
	Machine string            `json:"machine"`
	Load    string            `json:"load"`
	Config  map[string]string `json:"config"`
	Rows    []Row             `json:"rows"`
	Targets []Target          `json:"targets"`
	Ratios  []Target          `json:"ratios"`
	Facts   []string          `json:"facts"`
	// Calls is the PKCS#11 calls of each operation (docs/HSM.md gives
	// the minimum of each).
	Calls []CallCount `json:"pkcs11_calls"`
	// Interleaved is the ratios measured in interleaved pairs, which the
	// targets are judged on.
	Interleaved []Interleaved `json:"interleaved"`
	Wall        string        `json:"wall"`
}

func fmtRate(v float64) string {
	switch {
	case math.IsNaN(v):
		return "—"
	case v >= 100:
		return fmt.Sprintf("%.0f", v)
	case v >= 10:
		return fmt.Sprintf("%.1f", v)
	}
	return fmt.Sprintf("%.2f", v)
}

func fmtMS(s Stats, p50 bool) string {
	d := s.P99
	if p50 {
		d = s.P50
	}
	if s.Ops == 0 {
		return "—"
	}
	return fmt.Sprintf("%.2f", float64(d.Microseconds())/1000)
}

func fmtCPU(c float64) string {
	if c < 0 {
		return "—"
	}
	return fmt.Sprintf("%.0f", c)
}

// Markdown writes the report as markdown that pastes into
// docs/BENCHMARKS.md as it is.
func (r *Report) Markdown(w io.Writer) {
	fmt.Fprintf(w, "Run of %s at commit `%s` on %s; load average %s; wall time %s.\n\n", r.Date, r.Commit, r.Machine, r.Load, r.Wall)
	if len(r.Config) > 0 {
		keys := make([]string, 0, len(r.Config))
		for k, v := range r.Config {
			keys = append(keys, k+"="+v)
		}
		slices.Sort(keys)
		fmt.Fprintf(w, "Settings: `%s`.\n\n", strings.Join(keys, " "))
	}
	fmt.Fprintln(w, "| section | operation | conc. | ops/s | p50 ms | p99 ms | escrowd CPU % | Vault CPU % | errors | note |")
	fmt.Fprintln(w, "|---|---|--:|--:|--:|--:|--:|--:|--:|---|")
	for _, x := range r.Rows {
		fmt.Fprintf(w, "| %s | %s | %d | %s | %s | %s | %s | %s | %d | %s |\n", x.Section, x.Op, x.Conc,
			fmtRate(x.OpsPerSec), fmtMS(x.Stats, true), fmtMS(x.Stats, false), fmtCPU(x.CPU), fmtCPU(x.VaultCPU), x.Errors, x.Note)
	}
	if len(r.Calls) > 0 {
		fmt.Fprintln(w, "\n| operation | PKCS#11 calls |")
		fmt.Fprintln(w, "|---|--:|")
		for _, c := range r.Calls {
			fmt.Fprintf(w, "| %s | %d |\n", c.Op, c.Calls)
		}
	}
	if len(r.Interleaved) > 0 {
		fmt.Fprintln(w, "\nInterleaved ratios: each is the median of the ratios of pairs of points (A B A B …), with the smallest and largest pair ratio. CPU-normalised: A's operations per CPU second over B's (escrowd's process with SoftHSM inside it; the raw sequences' process; Vault's for Transit).")
		fmt.Fprintln(w, "\n| ratio | A | B | pairs × point | throughput A/B | CPU-normalised A/B | A ops/s | B ops/s | A CPU ms/op | B CPU ms/op | Vault CPU ms per A op | load at end |")
		fmt.Fprintln(w, "|---|---|---|--:|--:|--:|--:|--:|--:|--:|--:|---|")
		for _, x := range r.Interleaved {
			fmt.Fprintf(w, "| %s | %s | %s | %d × %s | %s | %s | %s | %s | %s | %s | %s | %s |\n", x.Name, x.A, x.B, x.Pairs, x.Point,
				fmtSpread(x.Ratio, 2), fmtSpread(x.CPU, 2), fmtSpread(x.AOps, 0), fmtSpread(x.BOps, 0),
				fmtSpread(x.ACPU, 3), fmtSpread(x.BCPU, 3), fmtSpread(x.VaultCPU, 3), x.Load)
		}
	}
	if len(r.Ratios) > 0 {
		fmt.Fprintln(w, "\n| ratio | value | how |")
		fmt.Fprintln(w, "|---|--:|---|")
		for _, t := range r.Ratios {
			fmt.Fprintf(w, "| %s | %.2f | %s |\n", t.Name, t.Ratio, t.Detail)
		}
	}
	if len(r.Targets) > 0 {
		fmt.Fprintln(w, "\n| target | ratio | wanted | verdict | from |")
		fmt.Fprintln(w, "|---|--:|--:|---|---|")
		for _, t := range r.Targets {
			op := "≥"
			if t.AtMost {
				op = "≤"
			}
			fmt.Fprintf(w, "| %s | %.2f | %s %.2f | **%s** | %s |\n", t.Name, t.Ratio, op, t.Want, t.Verdict(), t.Detail)
		}
	}
	if len(r.Facts) > 0 {
		fmt.Fprintln(w)
		for _, f := range r.Facts {
			fmt.Fprintf(w, "- %s\n", f)
		}
	}
}

// WriteJSON writes the report to path, making its directory.
func (r *Report) WriteJSON(path string) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return fmt.Errorf("bench: %w", err)
	}
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return fmt.Errorf("bench: %w", err)
	}
	if err := os.WriteFile(path, append(b, '\n'), 0o644); err != nil {
		return fmt.Errorf("bench: %w", err)
	}
	return nil
}
