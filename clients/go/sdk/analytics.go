package sdk

import (
	"context"
	"errors"
	"io"
	"time"

	exportv1 "github.com/cartlytics/cartlytics/clients/go/gen/analytics/export/v1"
	ingestv1 "github.com/cartlytics/cartlytics/clients/go/gen/analytics/ingest/v1"
	metricsv1 "github.com/cartlytics/cartlytics/clients/go/gen/analytics/metrics/v1"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// The read endpoints' answers are the generated messages (docs: proto/analytics/metrics/v1).
// Amounts are whole numbers of minor units carried in float64 fields.
type (
	SalesReport     = metricsv1.GetSalesResponse
	SalesBucket     = metricsv1.SalesBucket
	Growth          = metricsv1.Growth
	ProductsReport  = metricsv1.GetProductsResponse
	Product         = metricsv1.ProductPerformance
	CustomersReport = metricsv1.GetCustomersResponse
	Customer        = metricsv1.CustomerValue
	FunnelReport    = metricsv1.GetFunnelResponse
	FunnelStage     = metricsv1.FunnelStage
	RealtimeReport  = metricsv1.GetRealtimeResponse
	PageVisitors    = metricsv1.PageVisitors
)

// SalesQuery selects a sales overview. Every field is optional (defaults: 30d, day, the
// project's currency, UTC).
type SalesQuery struct {
	// Period is `Nd` (N in 1..366) or `Nm` (N in 1..24).
	Period string
	// Granularity is hour, day, week or month.
	Granularity string
	// Currency is an ISO 4217 code.
	Currency string
	// Timezone is an IANA time zone name.
	Timezone string
}

// ProductsQuery selects the top sellers (Limit 1..100, default 10).
type ProductsQuery struct {
	Period   string
	Limit    int32
	Currency string
	Timezone string
}

// CustomersQuery selects the customer metrics (Limit of top customers 1..100, default 10).
type CustomersQuery struct {
	Period   string
	Limit    int32
	Currency string
	Timezone string
}

// FunnelQuery selects a funnel: Steps are event names in order (default product_view,
// add_to_cart, checkout_started, order_completed); Window is the time allowed from the first
// step to the last, in whole seconds, 1 s..30 days (default 1 day).
type FunnelQuery struct {
	Period   string
	Steps    []string
	Window   time.Duration
	Timezone string
}

// RealtimeQuery selects what "today" and which currency mean (both optional).
type RealtimeQuery struct {
	Timezone string
	Currency string
}

// AnalyticsQuery is a custom query (docs/query.md lists the metrics and dimensions).
type AnalyticsQuery struct {
	Metrics    []string
	Dimensions []string
	// Filters: period, currency, timezone, and equality filters on any dimension.
	Filters map[string]string
	// OrderBy is `name`, `name:asc` or `name:desc`.
	OrderBy string
	// Limit is the most rows, 1..10000 (0: 100).
	Limit int32
}

// QueryResult is a custom query's answer.
type QueryResult struct {
	// Rows hold every requested dimension (string) and metric (float64) by name.
	Rows []map[string]any
}

// ExportQuery selects an export: Type is orders, events, products or customers; Format csv
// (default), json, ndjson or xlsx; From and To (YYYY-MM-DD or RFC 3339) override Period.
type ExportQuery struct {
	Type     string
	Period   string
	Format   string
	Currency string
	Timezone string
	From     string
	To       string
}

// AnalyticsService holds the calls of a Client (client.Analytics).
type AnalyticsService struct {
	c *Client
}

// Track sends one event and returns once the server stored it (retrying by the rules of
// docs/clients.md with the same event id). It is TrackWithResult without the acknowledgement.
func (a *AnalyticsService) Track(ctx context.Context, event *AnalyticsEvent) error {
	_, err := a.TrackWithResult(ctx, event)
	return err
}

// TrackWithResult sends one event and returns the stored id, name and timestamp. A refused
// event is an *Error with Code codes.InvalidArgument naming each broken rule's field; an
// event over 32 KB is ErrEventTooLarge, not sent.
func (a *AnalyticsService) TrackWithResult(ctx context.Context, event *AnalyticsEvent) (*TrackResult, error) {
	if a.c.isClosed() {
		return nil, ErrClosed
	}
	p, err := prepare(event, time.Now(), a.c.identity.current())
	if err != nil {
		return nil, err
	}
	req := &ingestv1.TrackEventRequest{Event: p.msg}
	var resp *ingestv1.TrackEventResponse
	err = a.c.call(ctx, func(ctx context.Context, opts ...grpc.CallOption) error {
		p.msg.SentAt = timestamppb.Now()
		r, err := a.c.ingest.TrackEvent(ctx, req, opts...)
		resp = r
		return err
	})
	if err != nil {
		return nil, err
	}
	return &TrackResult{ID: resp.GetId(), Event: resp.GetEvent(), Timestamp: resp.GetTimestamp().AsTime()}, nil
}

// Enqueue validates the event's size, assigns its id and queues it for the background sender,
// returning at once: ErrQueueFull when the queue is full, ErrEventTooLarge for an event over
// 32 KB, ErrClosed after Close. Outcomes go to Config.OnSuccess and Config.OnFailure. The
// event and its maps must not be modified after the call.
func (a *AnalyticsService) Enqueue(event *AnalyticsEvent) error {
	if a.c.isClosed() {
		return ErrClosed
	}
	return a.c.batcher.enqueue(event)
}

// Flush sends every event enqueued before the call and returns once each has succeeded or
// failed (nil; failures went to Config.OnFailure), or ctx's error when it ends first (the
// events stay queued). Do not call it from OnSuccess or OnFailure.
func (a *AnalyticsService) Flush(ctx context.Context) error {
	return a.c.batcher.flush(ctx)
}

// read runs one read call with the retry rules.
func read[Resp any](ctx context.Context, c *Client, rpc func(ctx context.Context, opts ...grpc.CallOption) (Resp, error)) (Resp, error) {
	var out Resp
	if c.isClosed() {
		return out, ErrClosed
	}
	err := c.call(ctx, func(ctx context.Context, opts ...grpc.CallOption) error {
		r, err := rpc(ctx, opts...)
		if err == nil {
			out = r
		}
		return err
	})
	return out, err
}

// GetSales answers revenue and orders over a period, with growth and a zero-filled series.
func (a *AnalyticsService) GetSales(ctx context.Context, q *SalesQuery) (*SalesReport, error) {
	if q == nil {
		q = &SalesQuery{}
	}
	req := &metricsv1.GetSalesRequest{Period: q.Period, Granularity: q.Granularity, Currency: q.Currency, Timezone: q.Timezone}
	return read(ctx, a.c, func(ctx context.Context, opts ...grpc.CallOption) (*SalesReport, error) {
		return a.c.metrics.GetSales(ctx, req, opts...)
	})
}

// GetProducts answers the best-selling products over a period.
func (a *AnalyticsService) GetProducts(ctx context.Context, q *ProductsQuery) (*ProductsReport, error) {
	if q == nil {
		q = &ProductsQuery{}
	}
	req := &metricsv1.GetProductsRequest{Period: q.Period, Limit: q.Limit, Currency: q.Currency, Timezone: q.Timezone}
	return read(ctx, a.c, func(ctx context.Context, opts ...grpc.CallOption) (*ProductsReport, error) {
		return a.c.metrics.GetProducts(ctx, req, opts...)
	})
}

// GetCustomers answers customer counts, repeat purchases and top customers over a period.
func (a *AnalyticsService) GetCustomers(ctx context.Context, q *CustomersQuery) (*CustomersReport, error) {
	if q == nil {
		q = &CustomersQuery{}
	}
	req := &metricsv1.GetCustomersRequest{Period: q.Period, Limit: q.Limit, Currency: q.Currency, Timezone: q.Timezone}
	return read(ctx, a.c, func(ctx context.Context, opts ...grpc.CallOption) (*CustomersReport, error) {
		return a.c.metrics.GetCustomers(ctx, req, opts...)
	})
}

// GetFunnel answers the conversion through ordered steps.
func (a *AnalyticsService) GetFunnel(ctx context.Context, q *FunnelQuery) (*FunnelReport, error) {
	if q == nil {
		q = &FunnelQuery{}
	}
	req := &metricsv1.GetFunnelRequest{Period: q.Period, Steps: q.Steps, Window: int32(q.Window / time.Second), Timezone: q.Timezone}
	return read(ctx, a.c, func(ctx context.Context, opts ...grpc.CallOption) (*FunnelReport, error) {
		return a.c.metrics.GetFunnel(ctx, req, opts...)
	})
}

// GetRealtime answers what is happening now (q may be nil).
func (a *AnalyticsService) GetRealtime(ctx context.Context, q *RealtimeQuery) (*RealtimeReport, error) {
	if q == nil {
		q = &RealtimeQuery{}
	}
	req := &metricsv1.GetRealtimeRequest{Timezone: q.Timezone, Currency: q.Currency}
	return read(ctx, a.c, func(ctx context.Context, opts ...grpc.CallOption) (*RealtimeReport, error) {
		return a.c.metrics.GetRealtime(ctx, req, opts...)
	})
}

// Query runs a custom query (RunQuery) and returns its rows as maps.
func (a *AnalyticsService) Query(ctx context.Context, q *AnalyticsQuery) (*QueryResult, error) {
	if q == nil {
		q = &AnalyticsQuery{}
	}
	req := &metricsv1.RunQueryRequest{Metrics: q.Metrics, Dimensions: q.Dimensions, Filters: q.Filters, OrderBy: q.OrderBy, Limit: q.Limit}
	resp, err := read(ctx, a.c, func(ctx context.Context, opts ...grpc.CallOption) (*metricsv1.RunQueryResponse, error) {
		return a.c.metrics.RunQuery(ctx, req, opts...)
	})
	if err != nil {
		return nil, err
	}
	out := &QueryResult{Rows: make([]map[string]any, 0, len(resp.GetRows()))}
	for _, row := range resp.GetRows() {
		out.Rows = append(out.Rows, row.AsMap())
	}
	return out, nil
}

// Export streams an export into w as the server sends it and returns the number of bytes
// written. It is retried by the usual rules until its first byte reached w, never after (w
// would hold a partial copy); Config.Timeout does not apply, only ctx bounds it. An error of w
// is returned as is.
func (a *AnalyticsService) Export(ctx context.Context, q *ExportQuery, w io.Writer) (int64, error) {
	if a.c.isClosed() {
		return 0, ErrClosed
	}
	if q == nil {
		q = &ExportQuery{}
	}
	req := &exportv1.ExportDataRequest{Type: q.Type, Period: q.Period, Format: q.Format, Currency: q.Currency, Timezone: q.Timezone, From: q.From, To: q.To}
	var written int64
	err := a.c.callWith(ctx, 0, func(ctx context.Context, opts ...grpc.CallOption) error {
		ctx, cancel := context.WithCancel(ctx)
		defer cancel()
		stream, err := a.c.export.ExportData(ctx, req, opts...)
		if err != nil {
			return err
		}
		for {
			chunk, err := stream.Recv()
			if errors.Is(err, io.EOF) {
				return nil
			}
			if err != nil {
				if written > 0 {
					return &permanent{err}
				}
				return err
			}
			if len(chunk.GetData()) == 0 {
				continue
			}
			n, werr := w.Write(chunk.GetData())
			written += int64(n)
			if werr != nil {
				return &permanent{werr}
			}
		}
	})
	return written, err
}
