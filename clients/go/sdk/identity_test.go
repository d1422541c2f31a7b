package sdk

import (
	"context"
	"fmt"
	"net"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	ingestv1 "github.com/cartlytics/cartlytics/clients/go/gen/analytics/ingest/v1"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/encoding/protojson"
)

// wireServer is an IngestService on a local port that stores nothing: it acknowledges every
// event and records each one as it arrived (decoded from the wire), in arrival order.
type wireServer struct {
	ingestv1.UnimplementedIngestServiceServer
	mu     sync.Mutex
	events []*ingestv1.Event
}

func (s *wireServer) TrackEvent(_ context.Context, req *ingestv1.TrackEventRequest) (*ingestv1.TrackEventResponse, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.events = append(s.events, req.GetEvent())
	e := req.GetEvent()
	return &ingestv1.TrackEventResponse{Id: e.GetId(), Event: e.GetEvent(), Timestamp: e.GetTimestamp()}, nil
}

func (s *wireServer) BatchTrackEvents(_ context.Context, req *ingestv1.BatchTrackEventsRequest) (*ingestv1.BatchTrackEventsResponse, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	resp := &ingestv1.BatchTrackEventsResponse{}
	for i, e := range req.GetEvents() {
		s.events = append(s.events, e)
		resp.Accepted = append(resp.Accepted, &ingestv1.AcceptedEvent{Index: int32(i), Id: e.GetId(), Event: e.GetEvent(), Timestamp: e.GetTimestamp()})
	}
	return resp, nil
}

// ids is what the server received as the event's JSON names it: {userId, anonymousId}
// present only when set (proto3 JSON leaves empty strings out, as the REST gateway does).
type ids struct{ UserID, AnonymousID string }

// received returns the ids of each event received so far, by event name.
func (s *wireServer) received(t *testing.T) map[string]ids {
	t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	out := map[string]ids{}
	for _, e := range s.events {
		raw, err := protojson.Marshal(e)
		if err != nil {
			t.Fatal(err)
		}
		// Read back from the event's JSON: a field absent there was not sent.
		var got ids
		if m := regexp.MustCompile(`"userId":\s*"([^"]*)"`).FindSubmatch(raw); m != nil {
			got.UserID = string(m[1])
		}
		if m := regexp.MustCompile(`"anonymousId":\s*"([^"]*)"`).FindSubmatch(raw); m != nil {
			got.AnonymousID = string(m[1])
		}
		if got.UserID != e.GetUserId() || got.AnonymousID != e.GetAnonymousId() {
			t.Fatalf("JSON %s disagrees with the message", raw)
		}
		if _, dup := out[e.GetEvent()]; dup {
			t.Fatalf("event %s received twice", e.GetEvent())
		}
		out[e.GetEvent()] = got
	}
	return out
}

// startWireServer serves a wireServer on 127.0.0.1 and returns a client of it (closed, with the
// server, at the end of the test).
func startWireServer(t *testing.T, cfg Config) (*wireServer, *Client) {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	ws := &wireServer{}
	ingestv1.RegisterIngestServiceServer(srv, ws)
	go func() { _ = srv.Serve(lis) }()
	t.Cleanup(srv.Stop)
	cfg.APIKey, cfg.Endpoint = "cak_test", lis.Addr().String()
	if cfg.FlushInterval == 0 {
		cfg.FlushInterval = time.Hour
	}
	c, err := NewClient(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return ws, c
}

var uuidV4 = regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$`)

func TestIdentityOnTheWire(t *testing.T) {
	ws, c := startWireServer(t, Config{})
	a := c.Analytics
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	track := func(ev *AnalyticsEvent) {
		t.Helper()
		if err := a.Track(ctx, ev); err != nil {
			t.Fatalf("Track %s: %v", ev.Event, err)
		}
	}
	enqueue := func(ev *AnalyticsEvent) {
		t.Helper()
		if err := a.Enqueue(ev); err != nil {
			t.Fatalf("Enqueue %s: %v", ev.Event, err)
		}
	}

	anon := a.AnonymousID()
	if !uuidV4.MatchString(anon) || a.UserID() != "" {
		t.Fatalf("a new client: anonymousId %q (want a UUID v4), userId %q", anon, a.UserID())
	}
	track(&AnalyticsEvent{Event: "before"})
	enqueue(&AnalyticsEvent{Event: "queued_before"})
	if err := a.Identify("user_1"); err != nil {
		t.Fatal(err)
	}
	if a.UserID() != "user_1" || a.AnonymousID() != anon {
		t.Fatalf("after Identify: %q %q", a.UserID(), a.AnonymousID())
	}
	track(&AnalyticsEvent{Event: "after"})
	enqueue(&AnalyticsEvent{Event: "queued_after"})
	// The caller's ids win, whole: the client adds none of its own to an event naming one.
	track(&AnalyticsEvent{Event: "own_user", UserID: "user_other"})
	track(&AnalyticsEvent{Event: "own_anon", AnonymousID: "anon_other"})
	track(&AnalyticsEvent{Event: "own_both", UserID: "user_x", AnonymousID: "anon_x"})
	track(&AnalyticsEvent{Event: "lifted_user", Properties: map[string]interface{}{"userId": "user_prop"}})
	enqueue(&AnalyticsEvent{Event: "queued_own", AnonymousID: "anon_q"})
	if err := a.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	// Identify sent nothing: every request carried one of the events above.
	if n := len(ws.received(t)); n != 9 {
		t.Fatalf("%d events received, want 9", n)
	}

	a.Reset()
	fresh := a.AnonymousID()
	if !uuidV4.MatchString(fresh) || fresh == anon || a.UserID() != "" {
		t.Fatalf("after Reset: anonymousId %q (was %q), userId %q", fresh, anon, a.UserID())
	}
	track(&AnalyticsEvent{Event: "after_reset"})
	enqueue(&AnalyticsEvent{Event: "queued_after_reset"})
	if err := a.Flush(ctx); err != nil {
		t.Fatal(err)
	}

	want := map[string]ids{
		"before":             {AnonymousID: anon},
		"queued_before":      {AnonymousID: anon}, // enqueued before Identify: not rewritten
		"after":              {UserID: "user_1", AnonymousID: anon},
		"queued_after":       {UserID: "user_1", AnonymousID: anon},
		"own_user":           {UserID: "user_other"},
		"own_anon":           {AnonymousID: "anon_other"},
		"own_both":           {UserID: "user_x", AnonymousID: "anon_x"},
		"lifted_user":        {UserID: "user_prop"},
		"queued_own":         {AnonymousID: "anon_q"},
		"after_reset":        {AnonymousID: fresh},
		"queued_after_reset": {AnonymousID: fresh},
	}
	got := ws.received(t)
	if len(got) != len(want) {
		t.Fatalf("received %v\nwant %v", got, want)
	}
	for name, w := range want {
		if got[name] != w {
			t.Errorf("%s: sent %+v, want %+v", name, got[name], w)
		}
	}
}

// Enqueue before Identify, Flush after it: the queued event keeps the ids it was enqueued with.
func TestIdentifyDoesNotRewriteTheQueue(t *testing.T) {
	var mu sync.Mutex
	var sources []*AnalyticsEvent
	ws, c := startWireServer(t, Config{AnonymousID: "anon_given", OnSuccess: func(acc []*AcceptedEvent) {
		mu.Lock()
		defer mu.Unlock()
		for _, e := range acc {
			sources = append(sources, e.Source)
		}
	}})
	a := c.Analytics
	if a.AnonymousID() != "anon_given" {
		t.Fatalf("Config.AnonymousID not used: %q", a.AnonymousID())
	}
	if err := a.Enqueue(&AnalyticsEvent{Event: "first"}); err != nil {
		t.Fatal(err)
	}
	if err := a.Identify("user_late"); err != nil {
		t.Fatal(err)
	}
	if err := a.Enqueue(&AnalyticsEvent{Event: "second"}); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := a.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	got := ws.received(t)
	if got["first"] != (ids{AnonymousID: "anon_given"}) || got["second"] != (ids{UserID: "user_late", AnonymousID: "anon_given"}) {
		t.Fatalf("%+v", got)
	}
	// OnSuccess's Source is the event as sent: the filled-in ids included.
	mu.Lock()
	defer mu.Unlock()
	if len(sources) != 2 || sources[1].UserID != "user_late" || sources[1].AnonymousID != "anon_given" || sources[0].UserID != "" {
		t.Fatalf("sources %+v", sources)
	}
}

func TestIdentifyRefusesBadIDs(t *testing.T) {
	c, err := NewClient(Config{APIKey: "cak_x", Endpoint: "127.0.0.1:1"})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = c.Close() }()
	for _, bad := range []string{"", "  ", strings.Repeat("u", MaxIDLength+1)} {
		if err := c.Analytics.Identify(bad); err == nil {
			t.Errorf("Identify(%q) accepted", bad)
		}
	}
	if c.Analytics.UserID() != "" {
		t.Fatalf("a refused Identify changed the user: %q", c.Analytics.UserID())
	}
	if err := c.Analytics.Identify(strings.Repeat("é", MaxIDLength)); err != nil {
		t.Fatalf("256 characters: %v", err)
	}
	if _, err := NewClient(Config{APIKey: "cak_x", AnonymousID: strings.Repeat("a", MaxIDLength+1)}); err == nil {
		t.Fatal("a 257-character Config.AnonymousID accepted")
	}
}

// Identify, Reset and events from many goroutines (run with -race for the data races): every
// event is received, each with one of the client's anonymousIds and a userId Identify set.
func TestIdentityConcurrentUse(t *testing.T) {
	ws, c := startWireServer(t, Config{FlushAt: 50})
	a := c.Analytics
	var wg sync.WaitGroup
	const workers, each = 8, 40
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range each {
				switch i % 4 {
				case 0:
					// Each worker's users are named after the anonymousId they were made for.
					if err := a.Identify("user_of_" + a.AnonymousID()); err != nil {
						t.Error(err)
					}
				case 1:
					if w%2 == 0 {
						a.Reset()
					}
				}
				if err := a.Enqueue(&AnalyticsEvent{Event: fmt.Sprintf("e_%d_%d", w, i)}); err != nil {
					t.Error(err)
				}
			}
		}()
	}
	wg.Wait()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := a.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	got := ws.received(t)
	if len(got) != workers*each {
		t.Fatalf("%d events received, want %d", len(got), workers*each)
	}
	for name, g := range got {
		if !uuidV4.MatchString(g.AnonymousID) {
			t.Fatalf("%s: anonymousId %q", name, g.AnonymousID)
		}
		if g.UserID != "" && !strings.HasPrefix(g.UserID, "user_of_") {
			t.Fatalf("%s: userId %q", name, g.UserID)
		}
	}
}
