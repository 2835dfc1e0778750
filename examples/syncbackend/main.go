// Command syncbackend is escrowd's reference sync backend: the part a team
// writes between its devices and escrowd. See README.md.
//
//	syncbackend -escrowd 127.0.0.1:7420 -ca ca.crt -cert sync-backend.crt -key sync-backend.key
//
// The PostgreSQL store is chosen by SYNCBACKEND_POSTGRES_URL (the URL may
// hold a password, so it is never a flag); without it the backend keeps
// everything in one bbolt file (-store).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/escrowd/escrowd/examples/syncbackend/backend"
	"github.com/escrowd/escrowd/examples/syncbackend/escrowdclient"
	"github.com/escrowd/escrowd/examples/syncbackend/store"
	"github.com/escrowd/escrowd/examples/syncbackend/store/postgres"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "syncbackend:", err)
		os.Exit(1)
	}
}

func splitList(s string) []string {
	var out []string
	for _, p := range strings.Split(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}

func run() error {
	listen := flag.String("listen", "127.0.0.1:8080", "address of the device API (put TLS in front of it)")
	metricsListen := flag.String("metrics-listen", "", "address of the Prometheus metrics endpoint (none if empty)")
	storePath := flag.String("store", "syncbackend.db", "the bbolt file, unless SYNCBACKEND_POSTGRES_URL is set")
	addr := flag.String("escrowd", "127.0.0.1:7420", "escrowd's gRPC address")
	ca := flag.String("ca", "ca.crt", "the CA that signed escrowd's certificate")
	cert := flag.String("cert", "sync-backend.crt", "the sync-backend identity's client certificate")
	key := flag.String("key", "sync-backend.key", "its private key")
	cycle := flag.Duration("cycle", 15*time.Minute, "how often the cycle job runs")
	events := flag.Duration("events", 10*time.Second, "how often escrowd's event feed is read")
	window := flag.Duration("window", 2*time.Minute, "how far a signed request's time may be from this clock")
	origins := flag.String("allow-origins", "", "comma-separated web origins whose pages may call the API (CORS)")
	flag.Parse()
	if flag.NArg() > 0 {
		return fmt.Errorf("unexpected argument %q", flag.Arg(0))
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	var st store.Store
	if url := os.Getenv("SYNCBACKEND_POSTGRES_URL"); url != "" {
		pg, err := postgres.Open(ctx, url)
		if err != nil {
			return err
		}
		st = pg
	} else {
		b, err := store.OpenBolt(*storePath)
		if err != nil {
			return err
		}
		st = b
	}
	defer st.Close()
	esc, err := escrowdclient.Dial(*addr, *ca, *cert, *key)
	if err != nil {
		return err
	}
	defer esc.Close()
	srv, err := backend.New(backend.Config{Store: st, Escrowd: esc, Log: log, Window: *window, CycleEvery: *cycle, EventsEvery: *events,
		AllowOrigins: splitList(*origins)})
	if err != nil {
		return err
	}

	// A request may wait on escrowd (a rotation re-wraps to every device
	// of the group), hence the generous write timeout.
	api := &http.Server{Addr: *listen, Handler: srv.Handler(), ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout: 30 * time.Second, WriteTimeout: 2 * time.Minute, IdleTimeout: 2 * time.Minute}
	errc := make(chan error, 2)
	go func() { errc <- api.ListenAndServe() }()
	var ms *http.Server
	if *metricsListen != "" {
		ms = &http.Server{Addr: *metricsListen, Handler: srv.Metrics(), ReadHeaderTimeout: 10 * time.Second}
		go func() { errc <- ms.ListenAndServe() }()
	}
	jobs := make(chan struct{})
	go func() {
		defer close(jobs)
		srv.Run(ctx)
	}()
	log.Info("serving", "api", *listen, "metrics", *metricsListen, "escrowd", *addr, "cycle", *cycle)

	select {
	case <-ctx.Done():
	case err := <-errc:
		if !errors.Is(err, http.ErrServerClosed) {
			return err
		}
	}
	sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if ms != nil {
		_ = ms.Shutdown(sctx)
	}
	err = api.Shutdown(sctx)
	stop()
	<-jobs // the store closes after the cycle job and the event reader stop
	return err
}
