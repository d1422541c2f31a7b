package sdk

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	ingestv1 "github.com/cartlytics/cartlytics/clients/go/gen/analytics/ingest/v1"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/structpb"
)

func TestBackoffCap(t *testing.T) {
	minB, maxB := 100*time.Millisecond, 10*time.Second
	want := []time.Duration{100, 200, 400, 800, 1600, 3200, 6400}
	for i, w := range want {
		if got := backoffCap(i+1, minB, maxB); got != w*time.Millisecond {
			t.Errorf("cap of retry %d: %v, want %v", i+1, got, w*time.Millisecond)
		}
	}
	for _, n := range []int{8, 9, 30, 64, 1000} {
		if got := backoffCap(n, minB, maxB); got != maxB {
			t.Errorf("cap of retry %d: %v, want %v", n, got, maxB)
		}
	}
}

func TestBackoffJitterBounds(t *testing.T) {
	minB, maxB := 100*time.Millisecond, 10*time.Second
	for n := 1; n <= 10; n++ {
		limit := backoffCap(n, minB, maxB)
		var lo, hi time.Duration = limit, 0
		for range 2000 {
			d := backoff(n, minB, maxB)
			if d < 0 || d > limit {
				t.Fatalf("retry %d waited %v, outside [0, %v]", n, d, limit)
			}
			lo, hi = min(lo, d), max(hi, d)
		}
		// Full jitter: the draws spread over the whole range, not just near the cap.
		if lo > limit/10 || hi < limit*9/10 {
			t.Errorf("retry %d: draws in [%v, %v] of [0, %v]", n, lo, hi, limit)
		}
	}
}

func TestRetryDelayRules(t *testing.T) {
	minB, maxB := 100*time.Millisecond, 10*time.Second
	for _, c := range []codes.Code{codes.InvalidArgument, codes.Internal, codes.NotFound, codes.PermissionDenied,
		codes.Unauthenticated, codes.FailedPrecondition, codes.OutOfRange, codes.Unknown, codes.Canceled, codes.Aborted} {
		if _, ok := retryDelay(1, &Error{Code: c}, minB, maxB); ok {
			t.Errorf("%v is retried", c)
		}
	}
	for _, c := range []codes.Code{codes.Unavailable, codes.DeadlineExceeded} {
		if d, ok := retryDelay(3, &Error{Code: c}, minB, maxB); !ok || d > 400*time.Millisecond {
			t.Errorf("%v: retried %v after %v", c, ok, d)
		}
	}
	d, ok := retryDelay(1, &Error{Code: codes.ResourceExhausted, RetryDelay: 1500 * time.Millisecond}, minB, maxB)
	if !ok || d < 1500*time.Millisecond || d > 1500*time.Millisecond {
		t.Errorf("429 with 1.5 s: retried %v after %v, want exactly 1.5 s (above the backoff)", ok, d)
	}
	d, ok = retryDelay(8, &Error{Code: codes.ResourceExhausted, RetryDelay: time.Millisecond}, minB, maxB)
	if !ok || d > maxB {
		t.Errorf("429 with 1 ms at retry 8: %v %v", ok, d)
	}
	if _, ok := retryDelay(1, &Error{Code: codes.Aborted, Reason: "EVENT_IN_FLIGHT"}, minB, maxB); !ok {
		t.Error("EVENT_IN_FLIGHT is not retried")
	}
}

func TestNewErrorReadsDetails(t *testing.T) {
	st, err := status.New(codes.InvalidArgument, "invalid event").WithDetails(
		&errdetails.BadRequest{FieldViolations: []*errdetails.BadRequest_FieldViolation{
			{Field: "properties.total", Description: "is required"},
			{Field: "event", Description: "must be a standard event"},
		}},
		&errdetails.ErrorInfo{Reason: "INVALID_EVENT", Domain: "cartlytics"},
	)
	if err != nil {
		t.Fatal(err)
	}
	e := newError(st.Err(), nil)
	if e.Code != codes.InvalidArgument || e.HTTPStatus != 400 || e.Message != "invalid event" || e.Reason != "INVALID_EVENT" ||
		len(e.FieldViolations) != 2 || e.FieldViolations[0] != (FieldViolation{"properties.total", "is required"}) {
		t.Fatalf("%+v", e)
	}
	var target *Error
	if !errors.As(error(e), &target) || status.Code(e) != codes.InvalidArgument {
		t.Fatal("errors.As / status.Code do not see the *Error")
	}
	want := "cartlytics: INVALID_ARGUMENT: invalid event; properties.total: is required; event: must be a standard event (reason INVALID_EVENT)"
	if e.Error() != want {
		t.Fatalf("Error() = %q\nwant      %q", e.Error(), want)
	}

	st, _ = status.New(codes.ResourceExhausted, "slow down").WithDetails(&errdetails.RetryInfo{RetryDelay: durationpb.New(750 * time.Millisecond)})
	if e := newError(st.Err(), nil); e.RetryDelay != 750*time.Millisecond || e.HTTPStatus != 429 {
		t.Fatalf("RetryInfo: %+v", e)
	}
	// Without RetryInfo, the retry-after trailer.
	e = newError(status.Error(codes.Unavailable, "down"), metadata.Pairs("retry-after", "2"))
	if e.RetryDelay != 2*time.Second || e.HTTPStatus != 503 {
		t.Fatalf("retry-after: %+v", e)
	}
	if e := newError(context.DeadlineExceeded, nil); e.Code != codes.DeadlineExceeded {
		t.Fatalf("deadline: %+v", e)
	}
}

func TestPrepare(t *testing.T) {
	now := time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)
	props := map[string]interface{}{"userId": "u1", "anonymousId": "a1", "timestamp": "2025-03-01T11:00:00Z",
		"context": map[string]interface{}{"page": "/x"}, "productId": "p1"}
	in := &AnalyticsEvent{Event: "product_view", Properties: props}
	p, err := prepare(in, now, visitor{})
	if err != nil {
		t.Fatal(err)
	}
	m := p.msg
	if m.GetUserId() != "u1" || m.GetAnonymousId() != "a1" || !m.GetTimestamp().AsTime().Equal(now.Add(-time.Hour)) {
		t.Fatalf("lifted: %v", m)
	}
	if f := m.GetProperties().GetFields(); len(f) != 1 || f["productId"].GetStringValue() != "p1" {
		t.Fatalf("properties %v", f)
	}
	ctx := m.GetContext().GetFields()
	if ctx["page"].GetStringValue() != "/x" || ctx["library"].GetStructValue().GetFields()["name"].GetStringValue() != LibraryName {
		t.Fatalf("context %v", ctx)
	}
	if len(props) != 5 || in.ID != "" || in.UserID != "" {
		t.Fatal("the caller's event or properties were modified")
	}
	if p.source.ID != m.GetId() || len(m.GetId()) != 36 || m.GetId()[:4] != "evt_" {
		t.Fatalf("id %q", m.GetId())
	}
	// Top-level fields win; the property stays. A caller's library is kept. No timestamp: now.
	p, err = prepare(&AnalyticsEvent{Event: "x", UserID: "top", ID: "evt_mine",
		Properties: map[string]interface{}{"userId": "prop"},
		Context:    map[string]interface{}{"library": map[string]interface{}{"name": "wrapper"}}}, now, visitor{})
	if err != nil {
		t.Fatal(err)
	}
	if p.msg.GetUserId() != "top" || p.msg.GetProperties().GetFields()["userId"].GetStringValue() != "prop" ||
		p.msg.GetId() != "evt_mine" || !p.msg.GetTimestamp().AsTime().Equal(now) ||
		p.msg.GetContext().GetFields()["library"].GetStructValue().GetFields()["name"].GetStringValue() != "wrapper" {
		t.Fatalf("%v", p.msg)
	}
	// Typed values go through encoding/json.
	p, err = prepare(&AnalyticsEvent{Event: "x", Properties: map[string]interface{}{
		"tags": []string{"a", "b"}, "at": now, "n": int64(7)}}, now, visitor{})
	if err != nil {
		t.Fatal(err)
	}
	f := p.msg.GetProperties().GetFields()
	if len(f["tags"].GetListValue().GetValues()) != 2 || f["at"].GetStringValue() != "2025-03-01T12:00:00Z" || f["n"].GetNumberValue() != 7 {
		t.Fatalf("%v", f)
	}
}

func TestEventSizeLimit(t *testing.T) {
	// {"s": "<n x>"} is n + 9 bytes as Python prints it; the context adds the library's JSON.
	lib, _ := structpb.NewValue(map[string]interface{}{"library": map[string]interface{}{"name": LibraryName, "version": Version}})
	libLen := jsonLen(lib)
	fits := MaxEventBytes - libLen - 9
	if _, err := prepare(&AnalyticsEvent{Event: "x", Properties: map[string]interface{}{"s": repeat('x', fits)}}, time.Now(), visitor{}); err != nil {
		t.Fatalf("an event of exactly 32 KB: %v", err)
	}
	if _, err := prepare(&AnalyticsEvent{Event: "x", Properties: map[string]interface{}{"s": repeat('x', fits+1)}}, time.Now(), visitor{}); !errors.Is(err, ErrEventTooLarge) {
		t.Fatalf("an event one byte over: %v", err)
	}
}

func repeat(c byte, n int) string {
	b := make([]byte, n)
	for i := range b {
		b[i] = c
	}
	return string(b)
}

func TestJSONLenMatchesPython(t *testing.T) {
	cases := []struct {
		value any
		want  string // what Python's json.dumps prints
	}{
		{map[string]interface{}{}, `{}`},
		{map[string]interface{}{"a": 1}, `{"a": 1}`},
		{map[string]interface{}{"a": 1.5, "b": "é"}, `{"a": 1.5, "b": "\u00e9"}`},
		{[]interface{}{true, false, nil, "q\"\n"}, `[true, false, null, "q\"\n"]`},
		{"😀\x01", `"\ud83d\ude00\u0001"`},
		{1e20, `1e+20`},
		{-42.0, `-42`},
	}
	for _, c := range cases {
		v, err := structpb.NewValue(c.value)
		if err != nil {
			t.Fatal(err)
		}
		if got := jsonLen(v); got != len(c.want) {
			t.Errorf("jsonLen(%v) = %d, want %d (%s)", c.value, got, len(c.want), c.want)
		}
	}
}

func TestConfigDefaults(t *testing.T) {
	c := Config{}.withDefaults()
	if c.MaxRetries != 5 || c.MinBackoff != 100*time.Millisecond || c.MaxBackoff != 10*time.Second ||
		c.FlushAt != 100 || c.FlushInterval != 5*time.Second || c.MaxBatchBytes != 450*1024 ||
		c.MaxQueueEvents != 10000 || c.MaxQueueBytes != 10*1024*1024 || c.CloseTimeout != 10*time.Second {
		t.Fatalf("%+v", c)
	}
	if c := (Config{MaxRetries: -1, FlushAt: 5000}).withDefaults(); c.MaxRetries != 0 || c.FlushAt != 1000 {
		t.Fatalf("%+v", c)
	}
	if _, err := NewClient(Config{}); err == nil {
		t.Fatal("no API key accepted")
	}
}

// Enqueue and Close without a server: Close gives up after its timeout and counts the events.
func TestCloseCountsUndelivered(t *testing.T) {
	var failed []*AnalyticsEvent
	c, err := NewClient(Config{APIKey: "cak_x", Endpoint: "127.0.0.1:1", FlushInterval: time.Hour, FlushAt: 1000,
		OnFailure: func(ev []*AnalyticsEvent, err error) { failed = append(failed, ev...) }})
	if err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		if err := c.Analytics.Enqueue(&AnalyticsEvent{Event: "x", AnonymousID: "a", Properties: map[string]interface{}{"i": i}}); err != nil {
			t.Fatal(err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel()
	err = c.Shutdown(ctx)
	var ce *CloseError
	if !errors.As(err, &ce) || ce.Undelivered != 3 || len(failed) != 3 {
		t.Fatalf("Shutdown: %v; %d reported to OnFailure", err, len(failed))
	}
	if err := c.Analytics.Enqueue(&AnalyticsEvent{Event: "x"}); !errors.Is(err, ErrClosed) {
		t.Fatalf("Enqueue after Close: %v", err)
	}
}

// Without a server: an interceptor answers every BatchTrackEvents, accepting every event but
// one, whose id it always says is in flight. With MaxRetries 1 the event is sent twice, then
// goes to OnFailure (ABORTED, EVENT_IN_FLIGHT); the others to OnSuccess once.
// inFlightServer is an interceptor answering every BatchTrackEvents without a server: it
// accepts each event except the one with property i == k, whose id it says is in flight. It
// records the ids of each request.
type inFlightServer struct {
	k        float64
	mu       sync.Mutex
	requests [][]string
}

func (f *inFlightServer) option() grpc.DialOption {
	return grpc.WithChainUnaryInterceptor(func(_ context.Context, _ string, req, reply any, _ *grpc.ClientConn, _ grpc.UnaryInvoker, _ ...grpc.CallOption) error {
		batch := req.(*ingestv1.BatchTrackEventsRequest)
		resp := reply.(*ingestv1.BatchTrackEventsResponse)
		var ids []string
		for i, e := range batch.GetEvents() {
			ids = append(ids, e.GetId())
			if e.GetProperties().GetFields()["i"].GetNumberValue() == f.k {
				resp.Rejected = append(resp.Rejected, &ingestv1.RejectedEvent{Index: int32(i), Field: "id", Description: inFlightDescription})
			} else {
				resp.Accepted = append(resp.Accepted, &ingestv1.AcceptedEvent{Index: int32(i), Id: e.GetId(), Event: e.GetEvent(), Timestamp: e.GetTimestamp()})
			}
		}
		f.mu.Lock()
		f.requests = append(f.requests, ids)
		f.mu.Unlock()
		return nil
	})
}

func TestInFlightResendsExhausted(t *testing.T) {
	const n, k = 3, 1
	srv := &inFlightServer{k: k}
	mu := &srv.mu
	var accepted []*AcceptedEvent
	var failed []*AnalyticsEvent
	var failure error
	c, err := NewClient(Config{APIKey: "cak_x", Endpoint: "127.0.0.1:1", MaxRetries: 1, MinBackoff: time.Millisecond,
		FlushAt: 1000, FlushInterval: time.Hour, DialOptions: []grpc.DialOption{srv.option()},
		OnSuccess: func(a []*AcceptedEvent) { mu.Lock(); accepted = append(accepted, a...); mu.Unlock() },
		OnFailure: func(ev []*AnalyticsEvent, err error) {
			mu.Lock()
			failed, failure = append(failed, ev...), err
			mu.Unlock()
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	for i := range n {
		if err := c.Analytics.Enqueue(&AnalyticsEvent{Event: "x", AnonymousID: "a", Properties: map[string]interface{}{"i": i}}); err != nil {
			t.Fatal(err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := c.Analytics.Flush(ctx); err != nil {
		t.Fatalf("Flush: %v", err)
	}
	mu.Lock()
	if len(accepted) != n-1 || len(failed) != 1 || failed[0].Properties["i"] != k {
		t.Fatalf("%d accepted, failed %v; want %d accepted and event %d failed", len(accepted), failed, n-1, k)
	}
	var e *Error
	if !errors.As(failure, &e) || e.Code != codes.Aborted || e.Reason != "EVENT_IN_FLIGHT" || e.Attempts != 2 {
		t.Fatalf("failure %v: want ABORTED, EVENT_IN_FLIGHT after 2 attempts", failure)
	}
	if r := srv.requests; len(r) != 2 || len(r[0]) != n || len(r[1]) != 1 || r[1][0] != failed[0].ID {
		t.Fatalf("requests carried ids %v: want %d ids, then %s again alone", r, n, failed[0].ID)
	}
	mu.Unlock()
	// Every outcome was reported by Flush: Close has nothing left to count.
	if err := c.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(accepted) != n-1 || len(failed) != 1 {
		t.Fatalf("after Close: %d accepted, %d failed", len(accepted), len(failed))
	}
}

// Close during a resend's backoff reports the held event once, with ErrClosed, and counts it.
func TestCloseDuringInFlightBackoff(t *testing.T) {
	srv := &inFlightServer{k: 0}
	var mu sync.Mutex
	accepted := 0
	var failed []error
	c, err := NewClient(Config{APIKey: "cak_x", Endpoint: "127.0.0.1:1", MinBackoff: time.Hour, MaxBackoff: time.Hour,
		FlushAt: 1000, FlushInterval: time.Hour, DialOptions: []grpc.DialOption{srv.option()},
		OnSuccess: func(a []*AcceptedEvent) { mu.Lock(); accepted += len(a); mu.Unlock() },
		OnFailure: func(ev []*AnalyticsEvent, err error) {
			mu.Lock()
			for range ev {
				failed = append(failed, err)
			}
			mu.Unlock()
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	for i := range 2 {
		if err := c.Analytics.Enqueue(&AnalyticsEvent{Event: "x", AnonymousID: "a", Properties: map[string]interface{}{"i": i}}); err != nil {
			t.Fatal(err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	err = c.Shutdown(ctx)
	var ce *CloseError
	if !errors.As(err, &ce) || ce.Undelivered != 1 || !errors.Is(err, ErrClosed) {
		t.Fatalf("Shutdown: %v; want 1 undelivered, ErrClosed", err)
	}
	mu.Lock()
	defer mu.Unlock()
	if accepted != 1 || len(failed) != 1 || !errors.Is(failed[0], ErrClosed) {
		t.Fatalf("%d accepted, failures %v; want 1 accepted, 1 failed with ErrClosed", accepted, failed)
	}
	srv.mu.Lock()
	defer srv.mu.Unlock()
	if len(srv.requests) != 1 {
		t.Fatalf("%d requests, want 1 (the resend waits its backoff)", len(srv.requests))
	}
}
