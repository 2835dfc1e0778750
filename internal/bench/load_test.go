package bench

import (
	"context"
	"errors"
	"os"
	"testing"
	"time"
)

// TestRunClosed checks the accounting of a closed-loop run (counts, errors,
// CPU of this process), not its speed.
func TestRunClosed(t *testing.T) {
	boom := errors.New("boom")
	r := RunClosed(context.Background(), 2, 20*time.Millisecond, os.Getpid(), func(_ context.Context, w int) (int, error) {
		time.Sleep(time.Millisecond)
		if w == 1 {
			return 0, boom
		}
		return 3, nil
	})
	if r.Ops == 0 || r.Ops%3 != 0 || r.Errors == 0 || !errors.Is(r.FirstErr, boom) || r.CPU < 0 {
		t.Fatalf("RunClosed: %+v", r)
	}
}

func TestRunOpen(t *testing.T) {
	r := RunOpen(context.Background(), 500, 20*time.Millisecond, 4, 0, func(context.Context, int) (int, error) { return 1, nil })
	if r.Ops != 10 || r.Errors != 0 || r.CPU != -1 {
		t.Fatalf("RunOpen: %+v", r)
	}
	if r := RunOpen(context.Background(), 0, time.Second, 4, 0, nil); r.Ops != 0 {
		t.Fatalf("RunOpen at rate 0: %+v", r)
	}
}
