package sdk

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"strings"
	"sync"

	exportv1 "github.com/cartlytics/cartlytics/clients/go/gen/analytics/export/v1"
	ingestv1 "github.com/cartlytics/cartlytics/clients/go/gen/analytics/ingest/v1"
	metricsv1 "github.com/cartlytics/cartlytics/clients/go/gen/analytics/metrics/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
)

// Client is a connection to a cartlytics server. It is safe for concurrent use. Close it to
// deliver the events still queued by Enqueue and release the connection.
type Client struct {
	// Analytics holds every call: Track, Enqueue, the reads, Query and Export.
	Analytics *AnalyticsService

	cfg     Config
	conn    *grpc.ClientConn
	ingest  ingestv1.IngestServiceClient
	metrics metricsv1.MetricsServiceClient
	export  exportv1.ExportServiceClient
	batcher *batcher
	// identity is the visitor the events name by default (Identify, Reset).
	identity *identity

	mu        sync.Mutex
	closed    bool
	closeDone chan struct{}
	closeErr  error
}

// CloseError is what Close returns when some queued events could not be delivered; they were
// also reported to Config.OnFailure.
type CloseError struct {
	// Undelivered is the number of events queued at Close that were not stored.
	Undelivered int
	// Err is the last reason (ErrClosed when Close's timeout gave up on them).
	Err error
}

func (e *CloseError) Error() string {
	return fmt.Sprintf("cartlytics: close: %d events not delivered: %v", e.Undelivered, e.Err)
}

func (e *CloseError) Unwrap() error { return e.Err }

type bearer string

func (b bearer) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	return map[string]string{"authorization": "Bearer " + string(b)}, nil
}

func (bearer) RequireTransportSecurity() bool { return false }

// NewClient makes a client. It does not connect yet: the connection is made by the first call
// (and remade as needed), so a server that is down shows as UNAVAILABLE errors, retried.
func NewClient(cfg Config) (*Client, error) {
	if strings.TrimSpace(cfg.APIKey) == "" {
		return nil, errors.New("cartlytics: Config.APIKey is required")
	}
	cfg = cfg.withDefaults()
	if cfg.AnonymousID != "" {
		if err := checkID("Config.AnonymousID", cfg.AnonymousID); err != nil {
			return nil, err
		}
	}
	target := cfg.Endpoint
	if rest, ok := strings.CutPrefix(target, "https://"); ok {
		target, cfg.TLS = rest, true
	} else if rest, ok := strings.CutPrefix(target, "http://"); ok {
		target = rest
	}
	target = strings.TrimSuffix(target, "/")
	var creds credentials.TransportCredentials
	switch {
	case cfg.TLSConfig != nil:
		creds = credentials.NewTLS(cfg.TLSConfig)
	case cfg.TLS:
		creds = credentials.NewTLS(&tls.Config{MinVersion: tls.VersionTLS12})
	default:
		creds = insecure.NewCredentials()
	}
	opts := []grpc.DialOption{
		grpc.WithTransportCredentials(creds),
		grpc.WithPerRPCCredentials(bearer(cfg.APIKey)),
		grpc.WithUserAgent(LibraryName + "/" + Version),
	}
	opts = append(opts, cfg.DialOptions...)
	conn, err := grpc.NewClient(target, opts...)
	if err != nil {
		return nil, fmt.Errorf("cartlytics: endpoint %q: %w", cfg.Endpoint, err)
	}
	c := &Client{
		cfg:      cfg,
		conn:     conn,
		ingest:   ingestv1.NewIngestServiceClient(conn),
		metrics:  metricsv1.NewMetricsServiceClient(conn),
		export:   exportv1.NewExportServiceClient(conn),
		identity: newIdentity(cfg.AnonymousID),
	}
	c.batcher = newBatcher(c)
	c.Analytics = &AnalyticsService{c: c}
	return c, nil
}

func (c *Client) isClosed() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.closed
}

// Flush delivers every event enqueued before the call; see AnalyticsService.Flush.
func (c *Client) Flush(ctx context.Context) error { return c.Analytics.Flush(ctx) }

// Close stops accepting events, delivers the queued ones (waiting up to Config.CloseTimeout),
// and closes the connection. It returns a *CloseError counting the events it could not
// deliver, nil when all were. Later calls return the first call's result.
func (c *Client) Close() error {
	ctx, cancel := context.WithTimeout(context.Background(), c.cfg.CloseTimeout)
	defer cancel()
	return c.Shutdown(ctx)
}

// Shutdown is Close with the caller's deadline instead of Config.CloseTimeout.
func (c *Client) Shutdown(ctx context.Context) error {
	c.mu.Lock()
	if c.closed {
		done := c.closeDone
		c.mu.Unlock()
		<-done
		return c.closeErr
	}
	c.closed = true
	c.closeDone = make(chan struct{})
	c.mu.Unlock()

	undelivered, cause := c.batcher.close(ctx)
	if undelivered > 0 {
		c.closeErr = &CloseError{Undelivered: undelivered, Err: cause}
	}
	if err := c.conn.Close(); err != nil && c.closeErr == nil {
		c.closeErr = fmt.Errorf("cartlytics: close: %w", err)
	}
	close(c.closeDone)
	return c.closeErr
}
