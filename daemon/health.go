package daemon

import (
	"context"
	"errors"
	"slices"
	"strings"
	"sync"

	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
)

// drainingHealth is grpc-go's health server with one change: a Watch
// stream ends when the server starts to drain, its last message
// NOT_SERVING. grpc-go's Watch runs until the client hangs up, and
// GracefulStop waits for every stream, so one load balancer watching
// health would otherwise hold every shutdown until its timeout.
type drainingHealth struct {
	*health.Server
	stop    <-chan struct{}
	reasons *notServingReasons
}

func (h drainingHealth) Watch(req *healthpb.HealthCheckRequest, stream grpc.ServerStreamingServer[healthpb.HealthCheckResponse]) error {
	ctx, cancel := context.WithCancel(stream.Context())
	defer cancel()
	go func() {
		select {
		case <-h.stop:
			cancel()
		case <-ctx.Done():
		}
	}()
	err := h.Server.Watch(req, watchStream{stream, ctx})
	select {
	case <-h.stop:
		// The inner loop has returned: this is the only sender now.
		return stream.Send(&healthpb.HealthCheckResponse{Status: healthpb.HealthCheckResponse_NOT_SERVING})
	default:
		return err
	}
}

// watchStream is a Watch stream with a context that ends at drain.
type watchStream struct {
	grpc.ServerStreamingServer[healthpb.HealthCheckResponse]
	ctx context.Context
}

func (w watchStream) Context() context.Context { return w.ctx }

// HeaderNotServing is the response header of a health Check answered
// NOT_SERVING: one value per failing dependency, "name: reason". gRPC
// health has no field for why, and an operator (or `grpcurl -v`) looking
// at a fleet that stopped serving needs to know without reading every
// replica's log.
const HeaderNotServing = "escrowd-not-serving"

// HealthReasoner is an error of a dependency check whose HealthReason may
// be said on the unauthenticated health listener: what is wrong and where,
// nothing secret. Other errors are said only by the dependency's name;
// their text goes to the log.
type HealthReasoner interface {
	HealthReason() string
}

// healthReason is what health says about dependency name failing with err.
func healthReason(name string, err error) string {
	var r HealthReasoner
	if errors.As(err, &r) {
		// A header value is printable ASCII.
		return name + ": " + strings.Map(func(c rune) rune {
			if c < ' ' || c > '~' {
				return '?'
			}
			return c
		}, r.HealthReason())
	}
	return name + ": unhealthy (escrowd's log says why)"
}

// notServingReasons is why the last health check failed, sorted; empty
// while serving.
type notServingReasons struct {
	mu      sync.Mutex
	reasons []string
}

func (n *notServingReasons) set(r []string) {
	slices.Sort(r)
	n.mu.Lock()
	n.reasons = r
	n.mu.Unlock()
}

func (n *notServingReasons) get() []string {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.reasons
}

// Check is grpc-go's, with the reasons in HeaderNotServing when the
// answer is NOT_SERVING.
func (h drainingHealth) Check(ctx context.Context, req *healthpb.HealthCheckRequest) (*healthpb.HealthCheckResponse, error) {
	r, err := h.Server.Check(ctx, req)
	if err == nil && r.GetStatus() == healthpb.HealthCheckResponse_NOT_SERVING && h.reasons != nil {
		if rs := h.reasons.get(); len(rs) > 0 {
			_ = grpc.SetHeader(ctx, metadata.MD{HeaderNotServing: rs})
		}
	}
	return r, err
}
