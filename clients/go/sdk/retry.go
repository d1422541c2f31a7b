package sdk

import (
	"context"
	"errors"
	"math/rand/v2"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

// backoffCap is the upper bound of retry n's wait (n from 1): min(max, min * 2^(n-1)).
func backoffCap(n int, minBackoff, maxBackoff time.Duration) time.Duration {
	if n < 1 {
		n = 1
	}
	d := minBackoff
	for i := 1; i < n; i++ {
		if d >= maxBackoff/2 {
			return maxBackoff
		}
		d *= 2
	}
	if d > maxBackoff {
		return maxBackoff
	}
	return d
}

// backoff is retry n's wait with full jitter: a random time in [0, backoffCap(n)].
func backoff(n int, minBackoff, maxBackoff time.Duration) time.Duration {
	limit := backoffCap(n, minBackoff, maxBackoff)
	if limit <= 0 {
		return 0
	}
	return time.Duration(rand.Int64N(int64(limit) + 1))
}

// retryDelay is how long to wait before retry n after err, and whether to retry at all.
func retryDelay(n int, err *Error, minBackoff, maxBackoff time.Duration) (time.Duration, bool) {
	switch err.Code {
	case codes.Unavailable, codes.DeadlineExceeded:
		return backoff(n, minBackoff, maxBackoff), true
	case codes.ResourceExhausted:
		return max(err.RetryDelay, backoff(n, minBackoff, maxBackoff)), true
	case codes.Aborted:
		// The server refuses a repeat of an id whose first request is still being stored
		// (EVENT_IN_FLIGHT, docs/semantics.md) "so the client retries".
		if err.Reason == "EVENT_IN_FLIGHT" {
			return max(err.RetryDelay, backoff(n, minBackoff, maxBackoff)), true
		}
	}
	return 0, false
}

// permanent marks an attempt's error as final: it is returned as is (a status error converted
// to *Error), never retried. Export uses it once bytes reached the writer, the batching mode
// once a batch's retry budget is spent.
type permanent struct{ err error }

func (p *permanent) Error() string { return p.err.Error() }

// attemptFunc makes one attempt of a call with the attempt's context and call options.
type attemptFunc func(ctx context.Context, opts ...grpc.CallOption) error

// call runs attempt with the retry rules of docs/clients.md: each attempt bounded by
// Config.Timeout, retries with backoff while the error is retryable, at most MaxRetries, and
// never past ctx's deadline.
func (c *Client) call(ctx context.Context, attempt attemptFunc) error {
	return c.callWith(ctx, c.cfg.Timeout, attempt)
}

// callWith is call with a per-attempt timeout (0: none, the attempt bounded by ctx only).
func (c *Client) callWith(ctx context.Context, timeout time.Duration, attempt attemptFunc) error {
	for n := 1; ; n++ {
		if err := ctx.Err(); err != nil {
			e := newError(err, nil)
			e.Attempts = n - 1
			e.cause = err
			return e
		}
		actx, cancel := ctx, context.CancelFunc(func() {})
		if timeout > 0 {
			actx, cancel = context.WithTimeout(ctx, timeout)
		}
		var trailer metadata.MD
		err := attempt(actx, grpc.Trailer(&trailer))
		cancel()
		if err == nil {
			return nil
		}
		final := false
		var p *permanent
		if errors.As(err, &p) {
			if _, isStatus := status.FromError(p.err); !isStatus {
				return p.err // the caller's writer failed: its own error
			}
			err, final = p.err, true
		}
		e := newError(err, trailer)
		e.Attempts = n
		if ctxErr := ctx.Err(); ctxErr != nil {
			e.cause = ctxErr
			return e
		}
		if final || n > c.cfg.MaxRetries {
			return e
		}
		wait, ok := retryDelay(n, e, c.cfg.MinBackoff, c.cfg.MaxBackoff)
		if !ok {
			return e
		}
		if deadline, has := ctx.Deadline(); has && time.Until(deadline) < wait {
			return e
		}
		timer := time.NewTimer(wait)
		select {
		case <-timer.C:
		case <-ctx.Done():
			timer.Stop()
			e.cause = ctx.Err()
			return e
		}
	}
}
