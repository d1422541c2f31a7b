package sdk_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	ingestv1 "github.com/cartlytics/cartlytics/clients/go/gen/analytics/ingest/v1"
	"github.com/cartlytics/cartlytics/clients/go/sdk"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

var eventID = regexp.MustCompile(`^evt_[0-9a-f]{32}$`)

// The spec's three calls, as written there.
func TestSpecCalls(t *testing.T) {
	t.Parallel()
	client := newClient(t, "", sdk.Config{})
	ctx := testContext(t, 60*time.Second)

	err := client.Analytics.Track(ctx, &sdk.AnalyticsEvent{
		Event:  "product_view",
		UserID: "user_xyz789",
		Properties: map[string]interface{}{
			"productId": "prod_abc123",
		},
	})
	if err != nil {
		t.Fatalf("Track: %v", err)
	}
	sales, err := client.Analytics.GetSales(ctx, &sdk.SalesQuery{
		Period: "30d",
	})
	if err != nil {
		t.Fatalf("GetSales: %v", err)
	}
	if sales.GetPeriod() != "30d" || sales.GetCurrency() == "" || len(sales.GetSeries()) != 30 {
		t.Fatalf("GetSales: period %q, currency %q, %d buckets (want 30d, a currency, 30)",
			sales.GetPeriod(), sales.GetCurrency(), len(sales.GetSeries()))
	}
	report, err := client.Analytics.Query(ctx, &sdk.AnalyticsQuery{
		Metrics:    []string{"revenue", "orders"},
		Dimensions: []string{"product_category"},
		Filters:    map[string]string{"period": "7d"},
	})
	if err != nil {
		t.Fatalf("Query: %v", err)
	}
	for _, row := range report.Rows {
		if _, ok := row["product_category"].(string); !ok {
			t.Fatalf("row without a product_category string: %v", row)
		}
		for _, metric := range []string{"revenue", "orders"} {
			if _, ok := row[metric].(float64); !ok {
				t.Fatalf("row without %s as a number: %v", metric, row)
			}
		}
	}
}

// TrackWithResult returns the client-made id, and the event carries the SDK's context.library.
func TestTrackWithResult(t *testing.T) {
	t.Parallel()
	var seen *ingestv1.Event
	var mu sync.Mutex
	spy := grpc.WithChainUnaryInterceptor(func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
		if r, ok := req.(*ingestv1.TrackEventRequest); ok {
			mu.Lock()
			seen = r.GetEvent()
			mu.Unlock()
		}
		return invoker(ctx, method, req, reply, cc, opts...)
	})
	client := newClient(t, "", sdk.Config{DialOptions: []grpc.DialOption{spy}})
	ctx := testContext(t, 60*time.Second)
	name := unique("sdk_go_result_")
	before := time.Now().Add(-time.Minute)
	// userId and sessionId given in the properties are lifted to the event.
	res, err := client.Analytics.TrackWithResult(ctx, &sdk.AnalyticsEvent{
		Event:      name,
		Properties: map[string]interface{}{"userId": "user_go_lift", "sessionId": "sess_go", "n": 1},
	})
	if err != nil {
		t.Fatalf("TrackWithResult: %v", err)
	}
	if !eventID.MatchString(res.ID) || res.Event != name {
		t.Fatalf("result %+v: want a client-made evt_ id and event %s", res, name)
	}
	if res.Timestamp.Before(before) || res.Timestamp.After(time.Now().Add(time.Minute)) {
		t.Fatalf("timestamp %v is not now", res.Timestamp)
	}
	mu.Lock()
	defer mu.Unlock()
	if seen.GetId() != res.ID || seen.GetUserId() != "user_go_lift" || seen.GetSessionId() != "sess_go" {
		t.Fatalf("sent event %v: want id %s, userId and sessionId lifted", seen, res.ID)
	}
	if _, ok := seen.GetProperties().GetFields()["userId"]; ok {
		t.Fatalf("userId left in the properties: %v", seen.GetProperties())
	}
	lib := seen.GetContext().GetFields()["library"].GetStructValue().GetFields()
	if lib["name"].GetStringValue() != "cartlytics-go" || lib["version"].GetStringValue() != sdk.Version {
		t.Fatalf("context.library = %v", lib)
	}
	if seen.GetSentAt() == nil {
		t.Fatal("no sentAt")
	}
}

// The one test that tracks orders (so the sales delta is its own), then every read endpoint.
func TestOrderAndReads(t *testing.T) {
	t.Parallel()
	client := newClient(t, "", sdk.Config{})
	ctx := testContext(t, 120*time.Second)

	user := unique("user_go_")
	product := unique("prod_go_")
	category := unique("cat_go_")
	order := unique("ord_go_")
	const price, quantity = 2599, 3
	const total = price*quantity + 500 // shipping on top of the line items
	before, err := client.Analytics.GetSales(ctx, &sdk.SalesQuery{Period: "1d", Currency: "USD"})
	if err != nil {
		t.Fatalf("GetSales before: %v", err)
	}

	view, err := client.Analytics.TrackWithResult(ctx, &sdk.AnalyticsEvent{
		Event: "product_view", UserID: user,
		Properties: map[string]interface{}{"productId": product, "name": "Go mug", "price": price, "currency": "USD"},
	})
	if err != nil {
		t.Fatalf("Track product_view: %v", err)
	}
	bought, err := client.Analytics.TrackWithResult(ctx, &sdk.AnalyticsEvent{
		Event: "order_completed", UserID: user,
		Properties: map[string]interface{}{
			"orderId": order, "total": total, "currency": "USD", "items": quantity,
			// A typed slice: the SDK converts it through encoding/json.
			"products": []map[string]interface{}{
				{"productId": product, "name": "Go mug", "category": category, "price": price, "quantity": quantity},
			},
		},
	})
	if err != nil {
		t.Fatalf("Track order_completed: %v", err)
	}

	eventually(t, 30*time.Second, func() error {
		after, err := client.Analytics.GetSales(ctx, &sdk.SalesQuery{Period: "1d", Currency: "USD"})
		if err != nil {
			return err
		}
		if got := after.GetRevenue() - before.GetRevenue(); got != total {
			return fmt.Errorf("sales revenue grew by %v, want %d", got, total)
		}
		if got := after.GetOrders() - before.GetOrders(); got != 1 {
			return fmt.Errorf("sales orders grew by %d, want 1", got)
		}
		return nil
	})

	byCategory, err := client.Analytics.Query(ctx, &sdk.AnalyticsQuery{
		Metrics: []string{"revenue", "orders", "units_sold"}, Dimensions: []string{"product_category"},
		Filters: map[string]string{"period": "1d", "product_category": category, "currency": "USD"},
	})
	if err != nil {
		t.Fatalf("Query by category: %v", err)
	}
	if len(byCategory.Rows) != 1 || byCategory.Rows[0]["revenue"] != float64(price*quantity) ||
		byCategory.Rows[0]["orders"] != float64(1) || byCategory.Rows[0]["units_sold"] != float64(quantity) {
		t.Fatalf("Query by category %s: %v, want revenue %d, 1 order, %d units", category, byCategory.Rows, price*quantity, quantity)
	}

	products, err := client.Analytics.GetProducts(ctx, &sdk.ProductsQuery{Period: "1d", Limit: 100, Currency: "USD"})
	if err != nil {
		t.Fatalf("GetProducts: %v", err)
	}
	var found *sdk.Product
	for _, p := range products.GetTopSellers() {
		if p.GetProductId() == product {
			found = p
		}
	}
	if found == nil || found.GetRevenue() != price*quantity || found.GetUnitsSold() != quantity || found.GetName() != "Go mug" ||
		found.GetConversionRate() != 100 {
		t.Fatalf("GetProducts: %v, want %s with revenue %d, %d units, conversion 100", found, product, price*quantity, quantity)
	}

	customers, err := client.Analytics.GetCustomers(ctx, &sdk.CustomersQuery{Period: "1d", Limit: 100, Currency: "USD"})
	if err != nil {
		t.Fatalf("GetCustomers: %v", err)
	}
	var customer *sdk.Customer
	for _, c := range customers.GetTopCustomers() {
		if c.GetCustomerId() == user {
			customer = c
		}
	}
	if customer == nil || customer.GetOrders() != 1 || customer.GetRevenue() != total || customers.GetTotalCustomers() < 1 {
		t.Fatalf("GetCustomers: %v (total %d), want %s with 1 order of %d", customer, customers.GetTotalCustomers(), user, total)
	}

	funnel, err := client.Analytics.GetFunnel(ctx, &sdk.FunnelQuery{
		Period: "1d", Steps: []string{"product_view", "order_completed"}, Window: time.Hour,
	})
	if err != nil {
		t.Fatalf("GetFunnel: %v", err)
	}
	if stages := funnel.GetStages(); len(stages) != 2 || stages[0].GetCount() < 1 || stages[1].GetCount() < 1 ||
		stages[1].GetCount() > stages[0].GetCount() {
		t.Fatalf("GetFunnel: %v, want 2 stages, each reached by our shopper", stages)
	}

	realtime, err := client.Analytics.GetRealtime(ctx, nil)
	if err != nil {
		t.Fatalf("GetRealtime: %v", err)
	}
	if realtime.GetActiveVisitors() < 1 || realtime.GetOrdersToday() < 1 || realtime.GetRevenueToday() < total {
		t.Fatalf("GetRealtime: %v, want our visitor and order", realtime)
	}

	var buf bytes.Buffer
	n, err := client.Analytics.Export(ctx, &sdk.ExportQuery{Type: "events", Format: "ndjson", Period: "1d"}, &buf)
	if err != nil {
		t.Fatalf("Export: %v", err)
	}
	if n != int64(buf.Len()) || n == 0 {
		t.Fatalf("Export wrote %d bytes, the buffer holds %d", n, buf.Len())
	}
	for _, id := range []string{view.ID, bought.ID} {
		if !strings.Contains(buf.String(), `"`+id+`"`) {
			t.Fatalf("the export lacks event %s", id)
		}
	}
}

// Enqueue, then Flush: every event delivered once, in batches of FlushAt.
func TestBatching(t *testing.T) {
	t.Parallel()
	var mu sync.Mutex
	var accepted []*sdk.AcceptedEvent
	var failures []error
	client := newClient(t, "", sdk.Config{
		FlushAt:   10,
		OnSuccess: func(a []*sdk.AcceptedEvent) { mu.Lock(); accepted = append(accepted, a...); mu.Unlock() },
		OnFailure: func(_ []*sdk.AnalyticsEvent, err error) { mu.Lock(); failures = append(failures, err); mu.Unlock() },
	})
	ctx := testContext(t, 120*time.Second)
	name := unique("sdk_go_batch_")
	const n = 25
	for i := range n {
		if err := client.Analytics.Enqueue(customEvent(name, i)); err != nil {
			t.Fatalf("Enqueue %d: %v", i, err)
		}
	}
	if err := client.Analytics.Flush(ctx); err != nil {
		t.Fatalf("Flush: %v", err)
	}
	mu.Lock()
	if len(failures) > 0 || len(accepted) != n {
		t.Fatalf("after Flush: %d accepted, failures %v; want %d accepted", len(accepted), failures, n)
	}
	ids := map[string]bool{}
	for _, a := range accepted {
		if a.Event != name || a.ID != a.Source.ID || !eventID.MatchString(a.ID) {
			t.Fatalf("accepted %+v", a)
		}
		ids[a.ID] = true
	}
	mu.Unlock()
	if len(ids) != n {
		t.Fatalf("%d distinct ids, want %d", len(ids), n)
	}
	expectCount(t, ctx, client, name, n)
}

// Close delivers what is still queued.
func TestCloseFlushes(t *testing.T) {
	t.Parallel()
	reader := newClient(t, "", sdk.Config{})
	var mu sync.Mutex
	delivered := 0
	target, key := liveStack(t, "")
	client, err := sdk.NewClient(sdk.Config{
		APIKey: key, Endpoint: target, FlushAt: 1000, FlushInterval: time.Hour,
		OnSuccess: func(a []*sdk.AcceptedEvent) { mu.Lock(); delivered += len(a); mu.Unlock() },
	})
	if err != nil {
		t.Fatal(err)
	}
	name := unique("sdk_go_close_")
	const n = 7
	for i := range n {
		if err := client.Analytics.Enqueue(customEvent(name, i)); err != nil {
			t.Fatalf("Enqueue: %v", err)
		}
	}
	if err := client.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	mu.Lock()
	if delivered != n {
		t.Fatalf("Close delivered %d events, want %d", delivered, n)
	}
	mu.Unlock()
	if err := client.Analytics.Enqueue(customEvent(name, n)); !errors.Is(err, sdk.ErrClosed) {
		t.Fatalf("Enqueue after Close: %v, want ErrClosed", err)
	}
	if err := client.Analytics.Track(context.Background(), customEvent(name, n)); !errors.Is(err, sdk.ErrClosed) {
		t.Fatalf("Track after Close: %v, want ErrClosed", err)
	}
	if err := client.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	expectCount(t, testContext(t, 60*time.Second), reader, name, n)
}

// callRecorder is a unary interceptor (through Config.DialOptions) that records the TrackEvent
// attempts and can fail the first one after the server answered it.
type callRecorder struct {
	mu        sync.Mutex
	ids       []string
	sentAts   []time.Time
	starts    []time.Time
	ends      []time.Time
	errs      []error
	failFirst bool
}

func (r *callRecorder) option() grpc.DialOption {
	return grpc.WithChainUnaryInterceptor(func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
		ev, ok := req.(*ingestv1.TrackEventRequest)
		if !ok {
			return invoker(ctx, method, req, reply, cc, opts...)
		}
		start := time.Now()
		err := invoker(ctx, method, req, reply, cc, opts...)
		r.mu.Lock()
		defer r.mu.Unlock()
		r.ids = append(r.ids, ev.GetEvent().GetId())
		r.sentAts = append(r.sentAts, ev.GetEvent().GetSentAt().AsTime())
		r.starts = append(r.starts, start)
		r.ends = append(r.ends, time.Now())
		r.errs = append(r.errs, err)
		if r.failFirst && len(r.ids) == 1 && err == nil {
			return status.Error(codes.Unavailable, "injected by the test after the server stored the event")
		}
		return err
	})
}

// A retried event keeps its id and is stored once.
func TestRetryKeepsID(t *testing.T) {
	t.Parallel()
	rec := &callRecorder{failFirst: true}
	client := newClient(t, "", sdk.Config{DialOptions: []grpc.DialOption{rec.option()}})
	ctx := testContext(t, 60*time.Second)
	name := unique("sdk_go_retry_")
	res, err := client.Analytics.TrackWithResult(ctx, customEvent(name, 0))
	if err != nil {
		t.Fatalf("Track: %v", err)
	}
	rec.mu.Lock()
	if len(rec.ids) != 2 || rec.ids[0] != rec.ids[1] || rec.ids[0] != res.ID || !eventID.MatchString(res.ID) {
		t.Fatalf("attempts carried ids %v, result %s: want 2 attempts with the same evt_ id", rec.ids, res.ID)
	}
	if rec.sentAts[1].Before(rec.sentAts[0]) {
		t.Fatalf("sentAt not stamped per attempt: %v", rec.sentAts)
	}
	rec.mu.Unlock()
	expectCount(t, ctx, client, name, 1)
}

// An invalid event is an *sdk.Error naming the field, never retried.
func TestNoRetryOnInvalidArgument(t *testing.T) {
	t.Parallel()
	rec := &callRecorder{}
	client := newClient(t, "", sdk.Config{DialOptions: []grpc.DialOption{rec.option()}})
	ctx := testContext(t, 60*time.Second)
	err := client.Analytics.Track(ctx, &sdk.AnalyticsEvent{
		Event: "product_view", UserID: "user_go_invalid", Properties: map[string]interface{}{"name": "no product id"},
	})
	var e *sdk.Error
	if !errors.As(err, &e) {
		t.Fatalf("Track: %v, want an *sdk.Error", err)
	}
	if e.Code != codes.InvalidArgument || e.HTTPStatus != 400 || status.Code(err) != codes.InvalidArgument {
		t.Fatalf("error %v: code %v, HTTP %d; want INVALID_ARGUMENT, 400", e, e.Code, e.HTTPStatus)
	}
	named := false
	for _, v := range e.FieldViolations {
		named = named || v.Field == "properties.productId"
	}
	if !named {
		t.Fatalf("field violations %v do not name properties.productId", e.FieldViolations)
	}
	rec.mu.Lock()
	defer rec.mu.Unlock()
	if len(rec.ids) != 1 {
		t.Fatalf("%d attempts, want 1", len(rec.ids))
	}
}

// A 429 is retried after its RetryInfo delay; both events are stored.
func TestBackoffOn429(t *testing.T) {
	t.Parallel()
	rec := &callRecorder{}
	client := newClient(t, "THROTTLED_", sdk.Config{DialOptions: []grpc.DialOption{rec.option()}})
	ctx := testContext(t, 120*time.Second)
	name := unique("sdk_go_throttled_")
	// Two Tracks back to back; on a machine so slow that the second comes more than a second
	// after the first (no 429), try again, a few times.
	sent := 0
	var elapsed time.Duration
	for round := 0; round < 4; round++ {
		time.Sleep(1500 * time.Millisecond) // the bucket (1/s, burst 1) is full again
		rec.mu.Lock()
		rec.errs, rec.ids, rec.starts, rec.ends, rec.sentAts = nil, nil, nil, nil, nil
		rec.mu.Unlock()
		start := time.Now()
		for i := range 2 {
			if err := client.Analytics.Track(ctx, customEvent(name, sent)); err != nil {
				t.Fatalf("Track %d of round %d: %v", i+1, round, err)
			}
			sent++
		}
		elapsed = time.Since(start)
		rec.mu.Lock()
		attempts := len(rec.ids)
		rec.mu.Unlock()
		if attempts > 2 {
			break
		}
		t.Logf("round %d: no 429 (the Tracks took %v)", round, elapsed)
	}

	rec.mu.Lock()
	throttled := 0
	for i, err := range rec.errs {
		if status.Code(err) != codes.ResourceExhausted {
			continue
		}
		throttled++
		var delay time.Duration
		for _, d := range status.Convert(err).Details() {
			if info, ok := d.(*errdetails.RetryInfo); ok {
				delay = info.GetRetryDelay().AsDuration()
			}
		}
		if delay <= 0 {
			t.Fatalf("429 without a RetryInfo delay: %v", err)
		}
		if i+1 >= len(rec.starts) {
			t.Fatalf("no attempt after the 429")
		}
		if waited := rec.starts[i+1].Sub(rec.ends[i]); waited < delay-20*time.Millisecond {
			t.Fatalf("retried %v after a 429 asking for %v", waited, delay)
		}
	}
	attempts := len(rec.ids)
	rec.mu.Unlock()
	if throttled == 0 || attempts < 3 {
		t.Fatalf("%d attempts, %d answered 429: the second Track within a second should have been throttled", attempts, throttled)
	}
	if elapsed < 900*time.Millisecond {
		t.Fatalf("both Tracks done in %v, under the limit's 1 s", elapsed)
	}
	t.Logf("%d attempts, %d throttled, both Tracks done in %v", attempts, throttled, elapsed)
	reader := newClient(t, "THROTTLED_", sdk.Config{})
	expectCount(t, ctx, reader, name, sent)
}

// A full queue refuses at once.
func TestQueueFull(t *testing.T) {
	t.Parallel()
	client := newClient(t, "", sdk.Config{MaxQueueEvents: 3, FlushAt: 1_000_000, FlushInterval: time.Hour})
	name := unique("sdk_go_full_")
	for i := range 3 {
		if err := client.Analytics.Enqueue(customEvent(name, i)); err != nil {
			t.Fatalf("Enqueue %d: %v", i, err)
		}
	}
	start := time.Now()
	err := client.Analytics.Enqueue(customEvent(name, 3))
	if !errors.Is(err, sdk.ErrQueueFull) {
		t.Fatalf("fourth Enqueue: %v, want ErrQueueFull", err)
	}
	if d := time.Since(start); d > time.Second {
		t.Fatalf("ErrQueueFull took %v", d)
	}
}

// An event over 32 KB is refused before sending.
func TestEventTooLarge(t *testing.T) {
	t.Parallel()
	rec := &callRecorder{}
	client := newClient(t, "", sdk.Config{DialOptions: []grpc.DialOption{rec.option()}})
	big := &sdk.AnalyticsEvent{
		Event: unique("sdk_go_big_"), AnonymousID: "anon_go_sdk",
		Properties: map[string]interface{}{"blob": strings.Repeat("x", 33*1024)},
	}
	if err := client.Analytics.Enqueue(big); !errors.Is(err, sdk.ErrEventTooLarge) {
		t.Fatalf("Enqueue: %v, want ErrEventTooLarge", err)
	}
	if err := client.Analytics.Track(testContext(t, 30*time.Second), big); !errors.Is(err, sdk.ErrEventTooLarge) {
		t.Fatalf("Track: %v, want ErrEventTooLarge", err)
	}
	rec.mu.Lock()
	defer rec.mu.Unlock()
	if len(rec.ids) != 0 {
		t.Fatalf("%d calls sent", len(rec.ids))
	}
}

// One invalid event of a batch goes to OnFailure with its field; the others are stored.
func TestBatchWithInvalidEvent(t *testing.T) {
	t.Parallel()
	type failure struct {
		events []*sdk.AnalyticsEvent
		err    error
	}
	var mu sync.Mutex
	var failures []failure
	accepted := 0
	client := newClient(t, "", sdk.Config{
		FlushAt: 1000, FlushInterval: time.Hour,
		OnSuccess: func(a []*sdk.AcceptedEvent) { mu.Lock(); accepted += len(a); mu.Unlock() },
		OnFailure: func(ev []*sdk.AnalyticsEvent, err error) {
			mu.Lock()
			failures = append(failures, failure{ev, err})
			mu.Unlock()
		},
	})
	ctx := testContext(t, 120*time.Second)
	name := unique("sdk_go_mixed_")
	badID := unique("evt_go_bad_")
	const valid = 4
	for i := range valid + 1 {
		ev := customEvent(name, i)
		if i == 2 {
			ev = &sdk.AnalyticsEvent{ID: badID, Event: "product_view", AnonymousID: "anon_go_sdk",
				Properties: map[string]interface{}{"name": "no product id"}}
		}
		if err := client.Analytics.Enqueue(ev); err != nil {
			t.Fatalf("Enqueue %d: %v", i, err)
		}
	}
	if err := client.Analytics.Flush(ctx); err != nil {
		t.Fatalf("Flush: %v", err)
	}
	mu.Lock()
	if accepted != valid || len(failures) != 1 || len(failures[0].events) != 1 || failures[0].events[0].ID != badID {
		t.Fatalf("%d accepted, failures %+v; want %d accepted and one failure for %s", accepted, failures, valid, badID)
	}
	var e *sdk.Error
	if !errors.As(failures[0].err, &e) || e.Code != codes.InvalidArgument || len(e.FieldViolations) == 0 ||
		e.FieldViolations[0].Field != "properties.productId" {
		t.Fatalf("failure error %v: want INVALID_ARGUMENT naming properties.productId", failures[0].err)
	}
	mu.Unlock()
	expectCount(t, ctx, client, name, valid)
}

// inFlight is the server's refusal of an event whose id an earlier request is still storing.
const inFlight = "an event with this id is being stored by another request; retry"

// An event of a batch refused only because its id is in flight (an earlier, timed-out attempt
// of the same ids still being stored) is sent again with the same id and gets the first
// acknowledgement: OnSuccess, never OnFailure, stored once.
func TestBatchResendsInFlight(t *testing.T) {
	t.Parallel()
	const n, k = 5, 2
	var mu sync.Mutex
	var requests [][]string // the ids of each BatchTrackEvents request
	rewrite := grpc.WithChainUnaryInterceptor(func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
		batch, ok := req.(*ingestv1.BatchTrackEventsRequest)
		if !ok {
			return invoker(ctx, method, req, reply, cc, opts...)
		}
		var ids []string
		for _, e := range batch.GetEvents() {
			ids = append(ids, e.GetId())
		}
		err := invoker(ctx, method, req, reply, cc, opts...)
		mu.Lock()
		requests = append(requests, ids)
		first := len(requests) == 1
		mu.Unlock()
		if err != nil || !first {
			return err
		}
		// The server stored every event; answer as it would if event k's id were in flight.
		resp := reply.(*ingestv1.BatchTrackEventsResponse)
		var kept []*ingestv1.AcceptedEvent
		for _, a := range resp.GetAccepted() {
			if a.GetIndex() != k {
				kept = append(kept, a)
			}
		}
		if len(kept) != n-1 {
			return fmt.Errorf("the server accepted %d events, want %d", len(resp.GetAccepted()), n)
		}
		resp.Accepted, resp.AcceptedCount = kept, int32(len(kept))
		resp.Rejected = append(resp.Rejected, &ingestv1.RejectedEvent{Index: k, Field: "id", Description: inFlight})
		resp.RejectedCount++
		return nil
	})
	var accepted []*sdk.AcceptedEvent
	var failures []error
	client := newClient(t, "", sdk.Config{
		FlushAt: 1000, FlushInterval: time.Hour, MinBackoff: 10 * time.Millisecond,
		DialOptions: []grpc.DialOption{rewrite},
		OnSuccess:   func(a []*sdk.AcceptedEvent) { mu.Lock(); accepted = append(accepted, a...); mu.Unlock() },
		OnFailure:   func(_ []*sdk.AnalyticsEvent, err error) { mu.Lock(); failures = append(failures, err); mu.Unlock() },
	})
	ctx := testContext(t, 120*time.Second)
	name := unique("sdk_go_inflight_")
	for i := range n {
		if err := client.Analytics.Enqueue(customEvent(name, i)); err != nil {
			t.Fatalf("Enqueue %d: %v", i, err)
		}
	}
	if err := client.Analytics.Flush(ctx); err != nil {
		t.Fatalf("Flush: %v", err)
	}
	mu.Lock()
	if len(failures) > 0 || len(accepted) != n {
		t.Fatalf("after Flush: %d accepted, failures %v; want %d accepted", len(accepted), failures, n)
	}
	if len(requests) != 2 || len(requests[0]) != n || len(requests[1]) != 1 || requests[1][0] != requests[0][k] {
		t.Fatalf("requests carried ids %v: want %d ids, then event %d's id again alone", requests, n, k)
	}
	resent := requests[0][k]
	seen := 0
	for _, ids := range requests {
		for _, id := range ids {
			if id == resent {
				seen++
			}
		}
	}
	if seen != 2 {
		t.Fatalf("id %s sent %d times, want 2", resent, seen)
	}
	ids := map[string]bool{}
	for _, a := range accepted {
		if a.Event != name || a.ID != a.Source.ID {
			t.Fatalf("accepted %+v", a)
		}
		ids[a.ID] = true
	}
	if len(ids) != n || !ids[resent] {
		t.Fatalf("%d distinct ids accepted (resent %s among them: %v), want %d", len(ids), resent, ids[resent], n)
	}
	mu.Unlock()
	expectCount(t, ctx, client, name, n)
}
