package daemon

import (
	"context"

	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

// drainingHealth is grpc-go's health server with one change: a Watch
// stream ends when the server starts to drain, its last message
// NOT_SERVING. grpc-go's Watch runs until the client hangs up, and
// GracefulStop waits for every stream, so one load balancer watching
// health would otherwise hold every shutdown until its timeout.
type drainingHealth struct {
	*health.Server
	stop <-chan struct{}
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
