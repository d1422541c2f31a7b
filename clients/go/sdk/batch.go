package sdk

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"sync"
	"time"

	ingestv1 "github.com/cartlytics/cartlytics/clients/go/gen/analytics/ingest/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// queued is an event in the queue, numbered in enqueue order.
type queued struct {
	p   *prepared
	seq uint64
}

// batcher is the batching mode: a bounded FIFO queue and one sender goroutine (started by the
// first Enqueue) that sends batches in order. Outcomes complete in enqueue order, so "every
// event up to seq N has an outcome" is one number, doneSeq, which Flush and Close wait on.
type batcher struct {
	c *Client

	mu         sync.Mutex
	queue      []*queued
	queueBytes int
	closed     bool
	started    bool
	nextSeq    uint64        // seq of the last enqueued event
	doneSeq    uint64        // every event with seq <= doneSeq has had its outcome
	forceSeq   uint64        // events with seq <= forceSeq are sent whatever the thresholds
	progress   chan struct{} // closed (and replaced) whenever doneSeq moves
	failed     int           // events reported to OnFailure so far
	lastErr    error         // the last failure's error
	wake       chan struct{}
	stop       chan struct{}
	stopped    chan struct{}
	sendCtx    context.Context
	cancelSend context.CancelFunc
}

func newBatcher(c *Client) *batcher {
	ctx, cancel := context.WithCancel(context.Background())
	return &batcher{
		c:          c,
		progress:   make(chan struct{}),
		wake:       make(chan struct{}, 1),
		stop:       make(chan struct{}),
		stopped:    make(chan struct{}),
		sendCtx:    ctx,
		cancelSend: cancel,
	}
}

func (b *batcher) signal() {
	select {
	case b.wake <- struct{}{}:
	default:
	}
}

func (b *batcher) enqueue(event *AnalyticsEvent) error {
	if b.isClosed() {
		return ErrClosed
	}
	p, err := prepare(event, time.Now(), b.c.identity.current())
	if err != nil {
		return err
	}
	cfg := &b.c.cfg
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		return ErrClosed
	}
	if len(b.queue) >= cfg.MaxQueueEvents || b.queueBytes+p.size > cfg.MaxQueueBytes {
		b.mu.Unlock()
		return ErrQueueFull
	}
	b.nextSeq++
	b.queue = append(b.queue, &queued{p: p, seq: b.nextSeq})
	b.queueBytes += p.size
	if !b.started {
		b.started = true
		go b.run()
	}
	full := len(b.queue) >= cfg.FlushAt || b.queueBytes >= cfg.MaxBatchBytes
	b.mu.Unlock()
	if full {
		b.signal()
	}
	return nil
}

func (b *batcher) isClosed() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.closed
}

// flush asks for every event enqueued so far to be sent and waits for their outcomes.
func (b *batcher) flush(ctx context.Context) error {
	b.mu.Lock()
	target := b.nextSeq
	if target > b.forceSeq {
		b.forceSeq = target
	}
	b.mu.Unlock()
	b.signal()
	return b.wait(ctx, target)
}

// wait returns once every event up to target has had its outcome, or ctx's error.
func (b *batcher) wait(ctx context.Context, target uint64) error {
	for {
		b.mu.Lock()
		done, progress := b.doneSeq >= target, b.progress
		b.mu.Unlock()
		if done {
			return nil
		}
		select {
		case <-progress:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// close stops accepting events, sends the queue until ctx ends, then gives up on what is left
// (reported to OnFailure with ErrClosed). It returns how many of the events queued at the call
// were not delivered, and the last reason.
func (b *batcher) close(ctx context.Context) (int, error) {
	b.mu.Lock()
	b.closed = true
	target := b.nextSeq
	b.forceSeq = target
	failedBefore := b.failed
	started := b.started
	b.mu.Unlock()
	if !started {
		return 0, nil
	}
	b.signal()
	_ = b.wait(ctx, target)
	b.cancelSend() // aborts a batch still being sent: its events fail with ErrClosed
	close(b.stop)
	<-b.stopped

	b.mu.Lock()
	rest := b.queue
	b.queue, b.queueBytes = nil, 0
	b.mu.Unlock()
	if len(rest) > 0 {
		b.report(nil, nil, sources(rest), fmt.Errorf("%w before these events were sent", ErrClosed))
		b.markDone(rest[len(rest)-1].seq)
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.failed - failedBefore, b.lastErr
}

func (b *batcher) run() {
	defer close(b.stopped)
	ticker := time.NewTicker(b.c.cfg.FlushInterval)
	defer ticker.Stop()
	for {
		select {
		case <-b.stop:
			return
		case <-b.wake:
		case <-ticker.C:
			b.mu.Lock()
			b.forceSeq = max(b.forceSeq, b.nextSeq)
			b.mu.Unlock()
		}
		b.drain()
	}
}

// drain sends batches while the queue holds a full batch or forced events.
func (b *batcher) drain() {
	cfg := &b.c.cfg
	for b.sendCtx.Err() == nil {
		b.mu.Lock()
		if len(b.queue) == 0 {
			b.mu.Unlock()
			return
		}
		forced := b.forceSeq >= b.queue[0].seq
		if !forced && len(b.queue) < cfg.FlushAt && b.queueBytes < cfg.MaxBatchBytes {
			b.mu.Unlock()
			return
		}
		n, size := 0, 0
		for n < len(b.queue) && n < cfg.FlushAt {
			s := b.queue[n].p.size
			if n > 0 && size+s > cfg.MaxBatchBytes {
				break
			}
			size += s
			n++
		}
		batch := make([]*queued, n)
		copy(batch, b.queue)
		clear(b.queue[:n])
		b.queue = b.queue[n:]
		b.queueBytes -= size
		b.mu.Unlock()
		b.send(batch)
	}
}

// inFlightDescription is the server's refusal of an event whose id an earlier request is still
// storing (IN_FLIGHT in services/ingest/ingestor.py): such an event is sent again, not failed.
const inFlightDescription = "an event with this id is being stored by another request; retry"

// send delivers one batch, reports each event's outcome exactly once, then marks the batch done
// for Flush and Close. The batch goes in one BatchTrackEvents request, retried by the rules;
// the events the server refused only because their id is in flight are sent again (same ids, in
// a new request) after a backoff, until acknowledged. Retries and resends share the batch's one
// budget: at most 1+MaxRetries attempts in all.
func (b *batcher) send(batch []*queued) {
	defer b.markDone(batch[len(batch)-1].seq)
	cfg := &b.c.cfg
	pending, attempts := batch, 0
	for {
		resp, n, err := b.post(pending, attempts)
		attempts += n
		if err != nil {
			var e *Error
			if errors.As(err, &e) {
				e.Attempts = attempts
			}
			if b.sendCtx.Err() != nil {
				err = fmt.Errorf("%w while these events were being sent: %w", ErrClosed, err)
			}
			b.report(nil, nil, sources(pending), err)
			return
		}
		out := classify(pending, resp, attempts)
		b.report(out.accepted, out.refused, out.missing, &Error{Code: codes.Unknown,
			HTTPStatus: http.StatusInternalServerError, Message: "the server answered nothing for this event", Attempts: attempts})
		if len(out.inFlight) == 0 {
			return
		}
		pending = out.inFlight
		stillInFlight := inFlightError(attempts)
		if attempts > cfg.MaxRetries {
			b.report(nil, nil, sources(pending), stillInFlight)
			return
		}
		wait, _ := retryDelay(attempts, stillInFlight, cfg.MinBackoff, cfg.MaxBackoff)
		if !b.sleep(wait) {
			b.report(nil, nil, sources(pending), fmt.Errorf("%w before these events were sent again: %w", ErrClosed, stillInFlight))
			return
		}
	}
}

// post sends events in one BatchTrackEvents request (sentAt stamped at each attempt), retried
// by the rules while the batch's budget lasts (spent: the batch's attempts before this
// request). It returns the server's answer and the attempts it made.
func (b *batcher) post(events []*queued, spent int) (*ingestv1.BatchTrackEventsResponse, int, error) {
	req := &ingestv1.BatchTrackEventsRequest{Events: make([]*ingestv1.Event, len(events))}
	for i, q := range events {
		req.Events[i] = q.p.msg
	}
	var resp *ingestv1.BatchTrackEventsResponse
	attempts := 0
	err := b.c.call(b.sendCtx, func(ctx context.Context, opts ...grpc.CallOption) error {
		attempts++
		now := timestamppb.Now()
		for _, e := range req.Events {
			e.SentAt = now
		}
		r, err := b.c.ingest.BatchTrackEvents(ctx, req, opts...)
		if err != nil && spent+attempts > b.c.cfg.MaxRetries {
			return &permanent{err} // the batch's budget is spent: no retry
		}
		resp = r
		return err
	})
	return resp, attempts, err
}

// refusal is an event the server refused, with its own error.
type refusal struct {
	event *AnalyticsEvent
	err   *Error
}

// outcome sorts the events of a request by the server's answer.
type outcome struct {
	accepted []*AcceptedEvent
	refused  []refusal
	inFlight []*queued         // refused only because their id is in flight: to send again
	missing  []*AnalyticsEvent // the server answered nothing for them
}

// classify reads the server's answer to a request of events (attempts: the batch's so far).
func classify(events []*queued, resp *ingestv1.BatchTrackEventsResponse, attempts int) outcome {
	accepted := make(map[int]*ingestv1.AcceptedEvent, len(resp.GetAccepted()))
	for _, a := range resp.GetAccepted() {
		accepted[int(a.GetIndex())] = a
	}
	violations := map[int][]FieldViolation{}
	for _, r := range resp.GetRejected() {
		i := int(r.GetIndex())
		violations[i] = append(violations[i], FieldViolation{Field: r.GetField(), Description: r.GetDescription()})
	}
	var out outcome
	for i, q := range events {
		a, ok := accepted[i]
		broken := violations[i]
		switch {
		case ok:
			out.accepted = append(out.accepted, &AcceptedEvent{ID: a.GetId(), Event: a.GetEvent(), Timestamp: a.GetTimestamp().AsTime(), Source: q.p.source})
		case len(broken) > 0 && onlyInFlight(broken):
			out.inFlight = append(out.inFlight, q)
		case len(broken) > 0:
			out.refused = append(out.refused, refusal{q.p.source, &Error{Code: codes.InvalidArgument,
				HTTPStatus: http.StatusBadRequest, Message: "event refused by the server", FieldViolations: broken, Attempts: attempts}})
		default:
			out.missing = append(out.missing, q.p.source)
		}
	}
	return out
}

// onlyInFlight reports whether an event's refusals all say its id is in flight.
func onlyInFlight(broken []FieldViolation) bool {
	for _, v := range broken {
		if v.Field != "id" || v.Description != inFlightDescription {
			return false
		}
	}
	return true
}

// inFlightError is the failure of events whose id was still in flight at the batch's last
// attempt: what Track answers for one (ABORTED, EVENT_IN_FLIGHT).
func inFlightError(attempts int) *Error {
	return &Error{Code: codes.Aborted, HTTPStatus: http.StatusConflict, Reason: "EVENT_IN_FLIGHT",
		Message:         "an event with this id was still being stored by another request",
		FieldViolations: []FieldViolation{{Field: "id", Description: inFlightDescription}}, Attempts: attempts}
}

func sources(events []*queued) []*AnalyticsEvent {
	out := make([]*AnalyticsEvent, len(events))
	for i, q := range events {
		out[i] = q.p.source
	}
	return out
}

// sleep waits d, or less when Close aborts the sending (then it returns false).
func (b *batcher) sleep(d time.Duration) bool {
	timer := time.NewTimer(d)
	defer timer.Stop()
	select {
	case <-timer.C:
		return true
	case <-b.sendCtx.Done():
		return false
	}
}

// report hands outcomes to the callbacks: accepted events to OnSuccess (one call), each refused
// event to OnFailure with its own error, failed events to OnFailure with err (one call). Each
// event is reported once: by one report call.
func (b *batcher) report(accepted []*AcceptedEvent, refused []refusal, failed []*AnalyticsEvent, err error) {
	cfg := &b.c.cfg
	if len(accepted) > 0 && cfg.OnSuccess != nil {
		cfg.OnSuccess(accepted)
	}
	for _, r := range refused {
		if cfg.OnFailure != nil {
			cfg.OnFailure([]*AnalyticsEvent{r.event}, r.err)
		}
	}
	if len(failed) > 0 && cfg.OnFailure != nil {
		cfg.OnFailure(failed, err)
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	b.failed += len(refused) + len(failed)
	if len(failed) > 0 {
		b.lastErr = err
	} else if len(refused) > 0 {
		b.lastErr = refused[len(refused)-1].err
	}
}

// markDone records that every event up to seq has had its outcome, waking Flush and Close.
func (b *batcher) markDone(seq uint64) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if seq > b.doneSeq {
		b.doneSeq = seq
	}
	close(b.progress)
	b.progress = make(chan struct{})
}
