package sdk

import (
	"crypto/tls"
	"time"

	"google.golang.org/grpc"
)

// Defaults of Config's zero fields (docs/clients.md).
const (
	DefaultEndpoint       = "127.0.0.1:50051"
	DefaultTimeout        = 10 * time.Second
	DefaultMaxRetries     = 5
	DefaultMinBackoff     = 100 * time.Millisecond
	DefaultMaxBackoff     = 10 * time.Second
	DefaultFlushAt        = 100
	MaxFlushAt            = 1000
	DefaultFlushInterval  = 5 * time.Second
	DefaultMaxBatchBytes  = 450 * 1024
	DefaultMaxQueueEvents = 10000
	DefaultMaxQueueBytes  = 10 * 1024 * 1024
	DefaultCloseTimeout   = 10 * time.Second
	// MaxEventBytes is the server's limit on an event's properties and context, as JSON.
	MaxEventBytes = 32 * 1024
)

// Config configures a Client. Only APIKey is required; every zero field takes its default.
type Config struct {
	// APIKey is the project's key (cak_...), sent as `authorization: Bearer <key>` on every call.
	APIKey string
	// Endpoint is the gRPC server as host:port (default 127.0.0.1:50051), or any target
	// grpc.NewClient accepts (dns:///host:443, unix:///path).
	Endpoint string
	// TLS dials with TLS (the system's roots) instead of plaintext. TLSConfig, when set, is used
	// instead and implies TLS.
	TLS       bool
	TLSConfig *tls.Config
	// DialOptions are added to the SDK's own (transport credentials, interceptors), after them.
	DialOptions []grpc.DialOption

	// Timeout bounds each attempt of a call (default 10 s); a timed-out attempt is retried.
	// The call as a whole is bounded by its context only.
	Timeout time.Duration
	// MaxRetries is the most retries of a call after its first attempt (default 5; a negative
	// value: none).
	MaxRetries int
	// MinBackoff and MaxBackoff bound the exponential backoff with full jitter (defaults 100 ms
	// and 10 s): retry n waits a random time in [0, min(MaxBackoff, MinBackoff*2^(n-1))].
	MinBackoff time.Duration
	MaxBackoff time.Duration

	// FlushAt is the number of queued events that triggers a batch (default 100, at most 1000).
	FlushAt int
	// FlushInterval is how often queued events are sent anyway (default 5 s).
	FlushInterval time.Duration
	// MaxBatchBytes caps a batch request's size (default 450 KB, under the server's 500 KB).
	MaxBatchBytes int
	// MaxQueueEvents and MaxQueueBytes bound the queue (defaults 10,000 events and 10 MB): an
	// Enqueue beyond either returns ErrQueueFull.
	MaxQueueEvents int
	MaxQueueBytes  int
	// CloseTimeout is how long Close waits for the queue to be delivered (default 10 s).
	CloseTimeout time.Duration

	// AnonymousID is the client's anonymousId (at most 256 characters), which events that name
	// no visitor carry (docs/clients.md, "Identity"); default a random UUID v4 made by NewClient.
	// Reset replaces it with a new random one.
	AnonymousID string

	// OnSuccess is called with the events the server stored, once per batch, from the SDK's
	// sender goroutine. Optional.
	OnSuccess func(accepted []*AcceptedEvent)
	// OnFailure is called with events that will not be delivered and why: the server refused
	// them (an *Error with Code InvalidArgument and their FieldViolations; one call per refused
	// event), their id was still in flight after every retry (an *Error with Code Aborted,
	// Reason EVENT_IN_FLIGHT), or their batch failed for good (the batch's *Error, or ErrClosed
	// when Close gave up on them). Called from the SDK's sender goroutine (or Close's). Optional.
	OnFailure func(events []*AnalyticsEvent, err error)
}

func (c Config) withDefaults() Config {
	if c.Endpoint == "" {
		c.Endpoint = DefaultEndpoint
	}
	if c.Timeout <= 0 {
		c.Timeout = DefaultTimeout
	}
	if c.MaxRetries == 0 {
		c.MaxRetries = DefaultMaxRetries
	} else if c.MaxRetries < 0 {
		c.MaxRetries = 0
	}
	if c.MinBackoff <= 0 {
		c.MinBackoff = DefaultMinBackoff
	}
	if c.MaxBackoff <= 0 {
		c.MaxBackoff = DefaultMaxBackoff
	}
	if c.MaxBackoff < c.MinBackoff {
		c.MaxBackoff = c.MinBackoff
	}
	if c.FlushAt <= 0 {
		c.FlushAt = DefaultFlushAt
	}
	if c.FlushAt > MaxFlushAt {
		c.FlushAt = MaxFlushAt
	}
	if c.FlushInterval <= 0 {
		c.FlushInterval = DefaultFlushInterval
	}
	if c.MaxBatchBytes <= 0 {
		c.MaxBatchBytes = DefaultMaxBatchBytes
	}
	if c.MaxQueueEvents <= 0 {
		c.MaxQueueEvents = DefaultMaxQueueEvents
	}
	if c.MaxQueueBytes <= 0 {
		c.MaxQueueBytes = DefaultMaxQueueBytes
	}
	if c.CloseTimeout <= 0 {
		c.CloseTimeout = DefaultCloseTimeout
	}
	return c
}
