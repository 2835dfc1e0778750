package backend

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/escrowd/escrowd/examples/syncbackend/auth"
	"github.com/escrowd/escrowd/examples/syncbackend/store"
)

// Handler is the device API. Every route but the two that enrol a device
// needs a request signed by an enrolled device (package auth); those two
// are signed by the key they enrol, which proves the device holds it.
//
//	POST   /v1/accounts                         create an account with its first device
//	POST   /v1/devices                          enrol another device, approved by one of the account's
//	GET    /v1/groups                           the groups of the device's account
//	POST   /v1/groups                           create (and provision) a group
//	GET    /v1/groups/{group}                   the group: members, keys, commitments, bundle
//	PUT    /v1/groups/{group}/bundle            store a bundle, if the group is at the version read
//	PUT    /v1/groups/{group}/members/{account} add a surrogate
//	DELETE /v1/groups/{group}/members/{account} remove a surrogate (the GDK rotates)
//	GET    /v1/groups/{group}/records           list records (?after=id)
//	GET    /v1/groups/{group}/records/{id}      one record
//	PUT    /v1/groups/{group}/records/{id}      store a record, if at the version read
//	POST   /v1/groups/{group}/codes/consumed    report an unlock code used
//	GET    /v1/notifications                    the account's notifications (?after=sequence)
func (s *Server) Handler() http.Handler {
	mux := http.NewServeMux()
	route := func(pattern string, h http.HandlerFunc) {
		mux.Handle(pattern, s.count(pattern, h))
	}
	route("POST /v1/accounts", s.handleCreateAccount)
	route("POST /v1/devices", s.handleEnrolDevice)
	route("GET /v1/groups", s.authed(s.handleListGroups))
	route("POST /v1/groups", s.authed(s.handleCreateGroup))
	route("GET /v1/groups/{group}", s.authed(s.handleGetGroup))
	route("PUT /v1/groups/{group}/bundle", s.authed(s.handlePutBundle))
	route("PUT /v1/groups/{group}/members/{account}", s.authed(s.handleAddMember))
	route("DELETE /v1/groups/{group}/members/{account}", s.authed(s.handleRemoveMember))
	route("GET /v1/groups/{group}/records", s.authed(s.handleListRecords))
	route("GET /v1/groups/{group}/records/{id}", s.authed(s.handleGetRecord))
	route("PUT /v1/groups/{group}/records/{id}", s.authed(s.handlePutRecord))
	route("POST /v1/groups/{group}/codes/consumed", s.authed(s.handleConsumed))
	route("GET /v1/notifications", s.authed(s.handleNotifications))
	return s.cors(mux)
}

// cors lets the pages of the configured origins call the API. Requests
// are authenticated by their signature, never by cookies, so no
// credentials are allowed.
func (s *Server) cors(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		origin := r.Header.Get("Origin")
		if origin == "" || !slices.Contains(s.cfg.AllowOrigins, origin) {
			h.ServeHTTP(w, r)
			return
		}
		w.Header().Set("Access-Control-Allow-Origin", origin)
		w.Header().Add("Vary", "Origin")
		if r.Method == http.MethodOptions && r.Header.Get("Access-Control-Request-Method") != "" {
			w.Header().Set("Access-Control-Allow-Methods", "GET, POST, PUT, DELETE")
			w.Header().Set("Access-Control-Allow-Headers", strings.Join([]string{"Content-Type", auth.HeaderDevice, auth.HeaderTime, auth.HeaderNonce, auth.HeaderSignature}, ", "))
			w.Header().Set("Access-Control-Max-Age", "600")
			w.WriteHeader(http.StatusNoContent)
			return
		}
		h.ServeHTTP(w, r)
	})
}

type statusWriter struct {
	http.ResponseWriter
	code int
}

func (w *statusWriter) WriteHeader(code int) {
	w.code = code
	w.ResponseWriter.WriteHeader(code)
}

func (s *Server) count(route string, h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		sw := &statusWriter{ResponseWriter: w, code: http.StatusOK}
		h.ServeHTTP(sw, r)
		s.metrics.requests.WithLabelValues(route, strconv.Itoa(sw.code)).Inc()
	})
}

// errorBody is every error response: a code a program can act on, a
// message a person can read, and for a conflict the current version.
type errorBody struct {
	Error   string  `json:"error"`
	Message string  `json:"message"`
	Current *uint64 `json:"current,omitempty"`
}

func (s *Server) fail(w http.ResponseWriter, r *http.Request, err error) {
	code, name := http.StatusInternalServerError, "internal"
	body := errorBody{}
	var ce *store.ConflictError
	var mbe *http.MaxBytesError
	switch {
	case errors.As(err, &ce):
		code, name = http.StatusConflict, "conflict"
		body.Current = &ce.Current
	case errors.Is(err, ErrStaleGDK):
		code, name = http.StatusConflict, "stale_gdk"
	case errors.As(err, &mbe):
		code, name = http.StatusRequestEntityTooLarge, "too_large"
	case errors.Is(err, ErrBadRequest):
		code, name = http.StatusBadRequest, "bad_request"
	case errors.Is(err, ErrUnauthenticated):
		code, name = http.StatusUnauthorized, "unauthenticated"
	case errors.Is(err, ErrForbidden):
		code, name = http.StatusForbidden, "forbidden"
	case errors.Is(err, store.ErrNotFound):
		code, name = http.StatusNotFound, "not_found"
	case errors.Is(err, store.ErrExists), errors.Is(err, ErrEscrowdExists):
		code, name = http.StatusConflict, "exists"
	case errors.Is(err, ErrEscrowdUnavailable):
		code, name = http.StatusServiceUnavailable, "escrowd_unavailable"
	case errors.Is(err, ErrEscrowdRefused), errors.Is(err, ErrEscrowdNotFound):
		code, name = http.StatusBadGateway, "escrowd_refused"
	}
	body.Error = name
	body.Message = err.Error()
	if code == http.StatusInternalServerError {
		// Keep internal detail (driver text) in the log only.
		s.log.Error("request failed", "method", r.Method, "path", r.URL.Path, "err", err)
		body.Message = "internal error"
	}
	writeJSON(w, code, body)
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
}

func readBody(w http.ResponseWriter, r *http.Request) ([]byte, error) {
	return io.ReadAll(http.MaxBytesReader(w, r.Body, MaxBody))
}

// verify checks the request's signature headers against key (the PKIX DER
// public key of the device they name) and spends its nonce.
func (s *Server) verify(ctx context.Context, r *http.Request, h auth.Headers, key, body []byte) error {
	now := s.cfg.Now()
	t := time.Unix(h.Time, 0)
	if t.Before(now.Add(-s.cfg.Window)) || t.After(now.Add(s.cfg.Window)) {
		return errors.New("the request's time is outside the window; check the device's clock")
	}
	if err := auth.Verify(key, auth.Message(r.Method, r.URL.RequestURI(), h.Device, h.Time, h.Nonce, body), h.Signature); err != nil {
		return err
	}
	if err := s.st.UseNonce(ctx, h.Device, h.Nonce, t.Add(s.cfg.Window), now); err != nil {
		if errors.Is(err, store.ErrReplay) {
			return errors.New("the nonce was used before (a replay)")
		}
		return err
	}
	return nil
}

type deviceHandler func(w http.ResponseWriter, r *http.Request, dev store.Device, body []byte)

// authed authenticates the request as an enrolled device.
func (s *Server) authed(h deviceHandler) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		body, err := readBody(w, r)
		if err != nil {
			s.fail(w, r, err)
			return
		}
		hd, err := auth.ParseHeaders(r.Header)
		if err != nil {
			s.fail(w, r, fmt.Errorf("%w: %w", ErrUnauthenticated, err))
			return
		}
		dev, err := s.st.Device(r.Context(), hd.Device)
		if errors.Is(err, store.ErrNotFound) {
			s.fail(w, r, fmt.Errorf("%w: %w", ErrUnauthenticated, errors.New("unknown device")))
			return
		}
		if err != nil {
			s.fail(w, r, err)
			return
		}
		if err := s.verify(r.Context(), r, hd, dev.SignKey, body); err != nil {
			s.fail(w, r, fmt.Errorf("%w: %w", ErrUnauthenticated, err))
			return
		}
		h(w, r, dev, body)
	}
}

// selfSigned authenticates a request by the key it enrols.
func (s *Server) selfSigned(w http.ResponseWriter, r *http.Request, device string, signKey, body []byte) bool {
	hd, err := auth.ParseHeaders(r.Header)
	if err == nil && hd.Device != device {
		err = errors.New("the request is signed for another device than it enrols")
	}
	if err == nil {
		err = s.verify(r.Context(), r, hd, signKey, body)
	}
	if err != nil {
		s.fail(w, r, fmt.Errorf("%w: %w", ErrUnauthenticated, err))
		return false
	}
	return true
}

func (s *Server) handleCreateAccount(w http.ResponseWriter, r *http.Request) {
	body, err := readBody(w, r)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	req, err := decodeCreateAccount(body)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	if !s.selfSigned(w, r, req.Device.ID, req.Device.SignKey, body) {
		return
	}
	if err := s.createAccount(r.Context(), req); err != nil {
		s.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusCreated, map[string]string{"account": req.Account, "device": req.Device.ID})
}

func (s *Server) handleEnrolDevice(w http.ResponseWriter, r *http.Request) {
	body, err := readBody(w, r)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	req, err := decodeEnrolDevice(body)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	if !s.selfSigned(w, r, req.Device.ID, req.Device.SignKey, body) {
		return
	}
	if err := s.enrolDevice(r.Context(), req); err != nil {
		s.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusCreated, map[string]string{"account": req.Account, "device": req.Device.ID})
}

func (s *Server) handleListGroups(w http.ResponseWriter, r *http.Request, dev store.Device, _ []byte) {
	ids, err := s.st.GroupsOf(r.Context(), dev.Account)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string][]string{"groups": append([]string{}, ids...)})
}

// groupView is a group as a device reads it.
type groupView struct {
	Group      string   `json:"group"`
	Version    uint64   `json:"version"`
	Owner      string   `json:"owner"`
	Surrogates []string `json:"surrogates"`
	GDKVersion uint32   `json:"gdk_version"`
	// Commitments of GDK versions 1, 2, …: what a device enrolled
	// through the backend pins (docs/FORMAT.md, "Which GDK a device
	// trusts").
	Commitments [][]byte      `json:"commitments"`
	EscrowKey   escrowKeyView `json:"escrow_key"`
	// Epoch is the requesting user's current unlock-code epoch.
	Epoch  uint32 `json:"epoch"`
	Bundle []byte `json:"bundle,omitempty"`
}

type escrowKeyView struct {
	Version   uint32 `json:"version"`
	Suite     string `json:"suite"`
	PublicKey []byte `json:"public_key"`
}

func view(g store.Group, account string) groupView {
	return groupView{Group: g.ID, Version: g.Version, Owner: g.Owner, Surrogates: append([]string{}, g.Surrogates...), GDKVersion: g.GDKVersion,
		Commitments: append([][]byte{}, g.Commitments...), EscrowKey: escrowKeyView{g.EscrowKeyVersion, g.EscrowSuite, g.EscrowKey},
		Epoch: g.Epochs[account], Bundle: g.Bundle}
}

func (s *Server) handleCreateGroup(w http.ResponseWriter, r *http.Request, dev store.Device, body []byte) {
	id, err := decodeCreateGroup(body)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	g, err := s.createGroup(r.Context(), dev, id)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusCreated, view(g, dev.Account))
}

func (s *Server) groupParam(r *http.Request) (string, error) {
	return parseID("group", r.PathValue("group"))
}

func (s *Server) handleGetGroup(w http.ResponseWriter, r *http.Request, dev store.Device, _ []byte) {
	id, err := s.groupParam(r)
	if err == nil {
		var g store.Group
		if g, err = s.member(r.Context(), id, dev.Account); err == nil {
			writeJSON(w, http.StatusOK, view(g, dev.Account))
			return
		}
	}
	s.fail(w, r, err)
}

func (s *Server) handlePutBundle(w http.ResponseWriter, r *http.Request, dev store.Device, body []byte) {
	id, err := s.groupParam(r)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	req, err := decodePutBundle(body)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	g, err := s.putBundle(r.Context(), dev, id, req)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, view(g, dev.Account))
}

func (s *Server) memberParams(r *http.Request) (string, string, error) {
	g, err := s.groupParam(r)
	if err != nil {
		return "", "", err
	}
	a, err := parseID("account", r.PathValue("account"))
	return g, a, err
}

func (s *Server) handleAddMember(w http.ResponseWriter, r *http.Request, dev store.Device, body []byte) {
	group, account, err := s.memberParams(r)
	if err == nil && len(body) > 0 {
		err = fmt.Errorf("%w: %w", ErrBadRequest, errors.New("this request has no body"))
	}
	if err != nil {
		s.fail(w, r, err)
		return
	}
	g, err := s.addMember(r.Context(), dev, group, account)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, view(g, dev.Account))
}

func (s *Server) handleRemoveMember(w http.ResponseWriter, r *http.Request, dev store.Device, body []byte) {
	group, account, err := s.memberParams(r)
	if err == nil && len(body) > 0 {
		err = fmt.Errorf("%w: %w", ErrBadRequest, errors.New("this request has no body"))
	}
	if err != nil {
		s.fail(w, r, err)
		return
	}
	g, err := s.removeMember(r.Context(), dev, group, account)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, view(g, dev.Account))
}

type recordView struct {
	ID      string    `json:"id"`
	Version uint64    `json:"version"`
	Record  []byte    `json:"record"`
	Updated time.Time `json:"updated"`
}

func (s *Server) handleListRecords(w http.ResponseWriter, r *http.Request, dev store.Device, _ []byte) {
	id, err := s.groupParam(r)
	after := r.URL.Query().Get("after")
	if err == nil && after != "" {
		after, err = parseID("after", after)
	}
	if err == nil {
		_, err = s.member(r.Context(), id, dev.Account)
	}
	var rs []store.Record
	if err == nil {
		rs, err = s.st.Records(r.Context(), id, after, 100)
	}
	if err != nil {
		s.fail(w, r, err)
		return
	}
	out := struct {
		Records []recordView `json:"records"`
	}{Records: []recordView{}}
	for _, rec := range rs {
		out.Records = append(out.Records, recordView{rec.ID, rec.Version, rec.Data, rec.Updated})
	}
	writeJSON(w, http.StatusOK, out)
}

func (s *Server) recordParams(r *http.Request) (string, string, error) {
	g, err := s.groupParam(r)
	if err != nil {
		return "", "", err
	}
	id, err := parseID("record", r.PathValue("id"))
	return g, id, err
}

func (s *Server) handleGetRecord(w http.ResponseWriter, r *http.Request, dev store.Device, _ []byte) {
	group, id, err := s.recordParams(r)
	if err == nil {
		_, err = s.member(r.Context(), group, dev.Account)
	}
	var rec store.Record
	if err == nil {
		rec, err = s.st.Record(r.Context(), group, id)
	}
	if err != nil {
		s.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, recordView{rec.ID, rec.Version, rec.Data, rec.Updated})
}

func (s *Server) handlePutRecord(w http.ResponseWriter, r *http.Request, dev store.Device, body []byte) {
	group, id, err := s.recordParams(r)
	var req putRecord
	if err == nil {
		req, err = decodePutRecord(body)
	}
	var rec store.Record
	if err == nil {
		rec, err = s.putRecord(r.Context(), dev, group, id, req)
	}
	if err != nil {
		s.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, recordView{rec.ID, rec.Version, rec.Data, rec.Updated})
}

func (s *Server) handleConsumed(w http.ResponseWriter, r *http.Request, dev store.Device, body []byte) {
	group, err := s.groupParam(r)
	var req consumed
	if err == nil {
		req, err = decodeConsumed(body)
	}
	var g store.Group
	if err == nil {
		g, err = s.codeConsumed(r.Context(), dev, group, req)
	}
	if err != nil {
		s.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, view(g, dev.Account))
}

type notificationView struct {
	Sequence uint64    `json:"sequence"`
	Kind     string    `json:"kind"`
	Group    string    `json:"group"`
	Epoch    uint32    `json:"epoch"`
	Index    uint32    `json:"index"`
	Ticket   string    `json:"ticket,omitempty"`
	Time     time.Time `json:"time"`
}

func (s *Server) handleNotifications(w http.ResponseWriter, r *http.Request, dev store.Device, _ []byte) {
	after, err := parseAfter(r.URL.Query().Get("after"))
	var ns []store.Notification
	if err == nil {
		ns, err = s.st.Notifications(r.Context(), dev.Account, after, 100)
	}
	if err != nil {
		s.fail(w, r, err)
		return
	}
	out := struct {
		Notifications []notificationView `json:"notifications"`
	}{Notifications: []notificationView{}}
	for _, n := range ns {
		out.Notifications = append(out.Notifications, notificationView{n.Sequence, n.Kind, n.Group, n.Epoch, n.Index, n.Ticket, n.Time})
	}
	writeJSON(w, http.StatusOK, out)
}
