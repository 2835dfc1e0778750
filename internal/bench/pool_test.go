package bench

import "testing"

// TestPoolIndexes: ecIndex enumerates exactly the ecdh-p256 groups of a
// store, in order, and rsaGroups counts the others; spread picks distinct
// indexes, one per stratum, or all of them.
func TestPoolIndexes(t *testing.T) {
	for _, n := range []int{1, 50, 51, 99, 100, 150, 151, 1000, 10_007} {
		var ec []int
		rsa := 0
		for i := range n {
			if isRSA(i) {
				rsa++
			} else {
				ec = append(ec, i)
			}
		}
		if rsaGroups(n) != rsa {
			t.Fatalf("n=%d: rsaGroups %d, want %d", n, rsaGroups(n), rsa)
		}
		for j, want := range ec {
			if got := ecIndex(j); got != want {
				t.Fatalf("n=%d: ecIndex(%d) = %d, want %d", n, j, got, want)
			}
		}
	}
	for _, tc := range []struct{ m, k int }{{0, 4}, {3, 4}, {4, 4}, {1000, 7}, {990_000, 1 << 14}} {
		got := spread(tc.m, tc.k)
		if want := min(tc.m, tc.k); len(got) != want {
			t.Fatalf("spread(%d, %d): %d picks, want %d", tc.m, tc.k, len(got), want)
		}
		for j, i := range got {
			lo, hi := j, j+1
			if tc.k < tc.m {
				lo, hi = j*tc.m/tc.k, (j+1)*tc.m/tc.k
			}
			if i < lo || i >= hi {
				t.Fatalf("spread(%d, %d): pick %d is %d, outside [%d, %d)", tc.m, tc.k, j, i, lo, hi)
			}
		}
	}
}
