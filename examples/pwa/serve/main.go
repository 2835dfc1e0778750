// Command serve serves a built demo PWA (examples/pwa/build.sh) for
// `make demo`:
//
//	serve -dir .run/pwa -listen 127.0.0.1:8000
//
// Any static server does; this one exists so the demo needs nothing but
// Go, and it sends the manifest's media type and no-cache headers so that
// a rebuilt app is picked up on reload.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log"
	"mime"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"
)

func main() {
	dir := flag.String("dir", ".run/pwa", "the directory build.sh wrote")
	listen := flag.String("listen", "127.0.0.1:8000", "address to serve on")
	flag.Parse()
	if flag.NArg() > 0 {
		fmt.Fprintf(os.Stderr, "serve: unexpected argument %q\n", flag.Arg(0))
		os.Exit(2)
	}
	if err := run(*dir, *listen); err != nil {
		fmt.Fprintln(os.Stderr, "serve:", err)
		os.Exit(1)
	}
}

func run(dir, listen string) error {
	if _, err := os.Stat(dir + "/index.html"); err != nil {
		return fmt.Errorf("no built app in %s (examples/pwa/build.sh): %w", dir, err)
	}
	if err := mime.AddExtensionType(".webmanifest", "application/manifest+json"); err != nil {
		return err
	}
	files := http.FileServer(http.Dir(dir))
	srv := &http.Server{Addr: listen, ReadHeaderTimeout: 10 * time.Second,
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Cache-Control", "no-cache")
			files.ServeHTTP(w, r)
		})}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	errc := make(chan error, 1)
	go func() { errc <- srv.ListenAndServe() }()
	log.Printf("serving %s on %s", dir, listen)
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}
