package sdk

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

// Sentinel errors of the batching mode (Enqueue) and of a closed client. Test for them with
// errors.Is.
var (
	// ErrQueueFull is returned by Enqueue when the queue holds Config.MaxQueueEvents events or
	// Config.MaxQueueBytes bytes: the event is not queued.
	ErrQueueFull = errors.New("cartlytics: queue full (QUEUE_FULL)")
	// ErrClosed is returned by every call made after Close.
	ErrClosed = errors.New("cartlytics: client closed")
	// ErrEventTooLarge is returned (by Enqueue and Track) for an event whose properties and
	// context are over 32 KB of JSON, which the server would refuse (EVENT_TOO_LARGE).
	ErrEventTooLarge = errors.New("cartlytics: event over 32 KB (EVENT_TOO_LARGE)")
)

// FieldViolation is one broken rule of a google.rpc.BadRequest (or one refusal of an event of a
// batch): the field, as a path inside the request or event, and the rule.
type FieldViolation struct {
	Field       string
	Description string
}

// Error is every error the server answered (and the transport errors, as UNAVAILABLE or
// DEADLINE_EXCEEDED). Use errors.As to read it:
//
//	var e *sdk.Error
//	if errors.As(err, &e) && e.Code == codes.InvalidArgument { ... e.FieldViolations ... }
type Error struct {
	// Code is the canonical gRPC code (codes.InvalidArgument, codes.ResourceExhausted, ...).
	Code codes.Code
	// HTTPStatus is the HTTP status the REST API answers for Code (400, 429, 503, ...).
	HTTPStatus int
	// Message is the server's message.
	Message string
	// FieldViolations are the google.rpc.BadRequest details: which field broke which rule.
	FieldViolations []FieldViolation
	// Reason is the google.rpc.ErrorInfo reason (e.g. RATE_LIMITED, EVENT_IN_FLIGHT), if any.
	Reason string
	// RetryDelay is the google.rpc.RetryInfo delay (else the retry-after trailer), if any.
	RetryDelay time.Duration
	// Attempts is how many attempts the SDK made before giving up (1 without retries).
	Attempts int

	cause error
}

func (e *Error) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "cartlytics: %s: %s", codeName(e.Code), e.Message)
	for _, v := range e.FieldViolations {
		fmt.Fprintf(&b, "; %s: %s", v.Field, v.Description)
	}
	if e.Reason != "" {
		fmt.Fprintf(&b, " (reason %s)", e.Reason)
	}
	if e.Attempts > 1 {
		fmt.Fprintf(&b, " after %d attempts", e.Attempts)
	}
	return b.String()
}

// Unwrap returns the context error (context.Canceled or context.DeadlineExceeded) when the
// call's own context ended it, so that errors.Is(err, context.DeadlineExceeded) works.
func (e *Error) Unwrap() error { return e.cause }

// GRPCStatus lets status.FromError and status.Code read the error.
func (e *Error) GRPCStatus() *status.Status { return status.New(e.Code, e.Message) }

// codeName spells a code as the canonical upper-case name (INVALID_ARGUMENT).
func codeName(c codes.Code) string {
	var b strings.Builder
	for i, r := range c.String() {
		if i > 0 && r >= 'A' && r <= 'Z' {
			b.WriteByte('_')
		}
		b.WriteRune(r)
	}
	return strings.ToUpper(b.String())
}

// httpStatus is the HTTP status of a code, as google.rpc.Code documents it (and the REST
// gateway answers).
func httpStatus(c codes.Code) int {
	switch c {
	case codes.OK:
		return http.StatusOK
	case codes.Canceled:
		return 499
	case codes.InvalidArgument, codes.FailedPrecondition, codes.OutOfRange:
		return http.StatusBadRequest
	case codes.DeadlineExceeded:
		return http.StatusGatewayTimeout
	case codes.NotFound:
		return http.StatusNotFound
	case codes.AlreadyExists, codes.Aborted:
		return http.StatusConflict
	case codes.PermissionDenied:
		return http.StatusForbidden
	case codes.Unauthenticated:
		return http.StatusUnauthorized
	case codes.ResourceExhausted:
		return http.StatusTooManyRequests
	case codes.Unimplemented:
		return http.StatusNotImplemented
	case codes.Unavailable:
		return http.StatusServiceUnavailable
	default:
		return http.StatusInternalServerError
	}
}

// newError turns what a call returned (a status error, a context error) into an *Error.
// trailer is the call's trailing metadata (for retry-after), possibly nil.
func newError(err error, trailer metadata.MD) *Error {
	var already *Error
	if errors.As(err, &already) {
		return already
	}
	st, _ := status.FromError(err) // a non-status error becomes UNKNOWN with its text
	if errors.Is(err, context.Canceled) {
		st = status.New(codes.Canceled, err.Error())
	} else if errors.Is(err, context.DeadlineExceeded) {
		st = status.New(codes.DeadlineExceeded, err.Error())
	}
	e := &Error{Code: st.Code(), HTTPStatus: httpStatus(st.Code()), Message: st.Message()}
	for _, d := range st.Details() {
		switch d := d.(type) {
		case *errdetails.BadRequest:
			for _, v := range d.GetFieldViolations() {
				e.FieldViolations = append(e.FieldViolations,
					FieldViolation{Field: v.GetField(), Description: v.GetDescription()})
			}
		case *errdetails.ErrorInfo:
			e.Reason = d.GetReason()
		case *errdetails.RetryInfo:
			if d.GetRetryDelay() != nil {
				e.RetryDelay = d.GetRetryDelay().AsDuration()
			}
		}
	}
	if e.RetryDelay == 0 {
		if values := trailer.Get("retry-after"); len(values) > 0 {
			if secs, perr := strconv.ParseFloat(strings.TrimSpace(values[0]), 64); perr == nil && secs > 0 {
				e.RetryDelay = time.Duration(secs * float64(time.Second))
			}
		}
	}
	return e
}
