package sdk

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"math"
	"strconv"
	"time"
	"unicode/utf8"

	ingestv1 "github.com/cartlytics/cartlytics/clients/go/gen/analytics/ingest/v1"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// AnalyticsEvent is one thing a shopper did. Event and one of UserID or AnonymousID are
// required; docs/semantics.md lists the standard events and their required properties
// (amounts are integers in minor units: "total": 6578 is 65.78 USD).
type AnalyticsEvent struct {
	// ID is the event's id (`evt_` and 1-64 of [A-Za-z0-9_-]); the SDK makes one
	// (evt_ + 32 hex digits) when it is empty, before the first attempt, so that a retry is
	// stored once.
	ID string
	// Event is a standard event name (page_view, product_view, add_to_cart, remove_from_cart,
	// checkout_started, order_completed, search) or a custom one (^[a-z][a-z0-9_]{0,63}$).
	Event       string
	UserID      string
	AnonymousID string
	SessionID   string
	// Timestamp is when it happened; zero means the time of the Track or Enqueue call.
	Timestamp time.Time
	// UserID and AnonymousID identify the visitor. When both are empty (and the properties
	// name neither), the event gets the client's: its anonymousId and the user of the last
	// Identify (docs/clients.md, "Identity"). An event naming either is sent with its own only.
	// Properties are the event's properties. Values are JSON-like: nil, bool, numbers, string,
	// map[string]any, []any (other slices, maps and structs go through encoding/json).
	// "userId", "anonymousId", "sessionId", "timestamp" and "context" found here are lifted to
	// the fields above when those are empty (docs/clients.md).
	Properties map[string]interface{}
	// Context is where it happened: ip, userAgent, page, referrer, campaign, locale...
	// context.library is set to {name: "cartlytics-go", version: Version} unless given.
	Context map[string]interface{}
}

// AcceptedEvent is an event the server stored (OnSuccess).
type AcceptedEvent struct {
	// ID, Event and Timestamp are as stored (Timestamp in UTC, clock skew corrected).
	ID        string
	Event     string
	Timestamp time.Time
	// Source is the event as it was enqueued (with its ID and Timestamp filled in).
	Source *AnalyticsEvent
}

// TrackResult is the acknowledgement of a tracked event.
type TrackResult struct {
	ID        string
	Event     string
	Timestamp time.Time
}

// newEventID is evt_ + 32 random hex digits.
func newEventID() string {
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic("cartlytics: no randomness: " + err.Error())
	}
	return "evt_" + hex.EncodeToString(b[:])
}

// prepared is an event ready to send: its proto (sentAt is stamped per attempt), the
// normalised copy handed to callbacks, and its size in bytes for the queue and batch limits.
type prepared struct {
	msg    *ingestv1.Event
	source *AnalyticsEvent
	size   int
}

// prepare validates an event's size, assigns its id and timestamp, lifts the known keys out of
// its properties, fills in the client's identity (who) when the event names neither a userId nor
// an anonymousId, and builds its proto. The caller's event and maps are not modified.
func prepare(ev *AnalyticsEvent, now time.Time, who visitor) (*prepared, error) {
	if ev == nil {
		return nil, fmt.Errorf("cartlytics: nil event")
	}
	out := *ev
	props := ev.Properties
	copied := false
	lift := func(key string, apply func(v any) bool) {
		v, ok := props[key]
		if !ok || !apply(v) {
			return
		}
		if !copied {
			copied = true
			props = make(map[string]interface{}, len(ev.Properties))
			for k, v := range ev.Properties {
				props[k] = v
			}
		}
		delete(props, key)
	}
	liftString := func(field *string) func(v any) bool {
		return func(v any) bool {
			s, ok := v.(string)
			if !ok || *field != "" {
				return false
			}
			*field = s
			return true
		}
	}
	lift("userId", liftString(&out.UserID))
	lift("anonymousId", liftString(&out.AnonymousID))
	lift("sessionId", liftString(&out.SessionID))
	lift("timestamp", func(v any) bool {
		if !out.Timestamp.IsZero() {
			return false
		}
		switch t := v.(type) {
		case time.Time:
			out.Timestamp = t
			return !t.IsZero()
		case string:
			parsed, err := time.Parse(time.RFC3339Nano, t)
			if err != nil {
				return false
			}
			out.Timestamp = parsed
			return true
		}
		return false
	})
	lift("context", func(v any) bool {
		m, ok := v.(map[string]interface{})
		if !ok || out.Context != nil {
			return false
		}
		out.Context = m
		return true
	})
	out.Properties = props
	// The client's ids only for an event that names none of its own: an event's own ids are
	// sent as given, never mixed with the client's (docs/clients.md, "Identity").
	if out.UserID == "" && out.AnonymousID == "" {
		out.UserID, out.AnonymousID = who.userID, who.anonymousID
	}
	if out.ID == "" {
		out.ID = newEventID()
	}
	if out.Timestamp.IsZero() {
		out.Timestamp = now
	}

	properties, err := toStruct(out.Properties)
	if err != nil {
		return nil, fmt.Errorf("cartlytics: event properties: %w", err)
	}
	context, err := toStruct(out.Context)
	if err != nil {
		return nil, fmt.Errorf("cartlytics: event context: %w", err)
	}
	if _, ok := context.Fields["library"]; !ok {
		context.Fields["library"] = structpb.NewStructValue(&structpb.Struct{Fields: map[string]*structpb.Value{
			"name":    structpb.NewStringValue(LibraryName),
			"version": structpb.NewStringValue(Version),
		}})
	}
	jsonSize := jsonLen(structpb.NewStructValue(properties)) + jsonLen(structpb.NewStructValue(context))
	if jsonSize > MaxEventBytes {
		return nil, fmt.Errorf("%w: %d bytes of properties and context", ErrEventTooLarge, jsonSize)
	}
	msg := &ingestv1.Event{
		Id:          out.ID,
		Event:       out.Event,
		UserId:      out.UserID,
		AnonymousId: out.AnonymousID,
		SessionId:   out.SessionID,
		Timestamp:   timestamppb.New(out.Timestamp),
		Properties:  properties,
		Context:     context,
	}
	// The queue and batch limits count the larger of the event's JSON and its protobuf form
	// (what the server measures over gRPC), with room for sentAt and the ids.
	size := proto.Size(msg) + 24
	if j := jsonSize + 200 + len(out.ID) + len(out.Event) + len(out.UserID) + len(out.AnonymousID) + len(out.SessionID); j > size {
		size = j
	}
	return &prepared{msg: msg, source: &out, size: size}, nil
}

// toStruct converts a JSON-like map; values structpb does not take (typed slices, structs,
// time.Time) go through encoding/json.
func toStruct(m map[string]interface{}) (*structpb.Struct, error) {
	if m == nil {
		return &structpb.Struct{Fields: map[string]*structpb.Value{}}, nil
	}
	if s, err := structpb.NewStruct(m); err == nil {
		return s, nil
	}
	raw, err := json.Marshal(m)
	if err != nil {
		return nil, err
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	var generic map[string]interface{}
	if err := dec.Decode(&generic); err != nil {
		return nil, err
	}
	return structpb.NewStruct(generic)
}

// jsonLen is the length of Python's json.dumps of a value (the server's measure of an event's
// size): ", " and ": " separators, non-ASCII escaped as \uXXXX, whole numbers as integers.
func jsonLen(v *structpb.Value) int {
	switch k := v.GetKind().(type) {
	case *structpb.Value_BoolValue:
		if k.BoolValue {
			return 4
		}
		return 5
	case *structpb.Value_NumberValue:
		n := k.NumberValue
		switch {
		case math.IsNaN(n):
			return 3
		case math.IsInf(n, 0):
			return 8 + map[bool]int{true: 1}[n < 0]
		case n == math.Trunc(n) && math.Abs(n) < 1<<53:
			return len(strconv.FormatInt(int64(n), 10))
		default:
			return len(strconv.FormatFloat(n, 'g', -1, 64))
		}
	case *structpb.Value_StringValue:
		return quotedLen(k.StringValue)
	case *structpb.Value_ListValue:
		items := k.ListValue.GetValues()
		n := 2
		for i, item := range items {
			if i > 0 {
				n += 2
			}
			n += jsonLen(item)
		}
		return n
	case *structpb.Value_StructValue:
		fields := k.StructValue.GetFields()
		n := 2
		i := 0
		for key, item := range fields {
			if i > 0 {
				n += 2
			}
			n += quotedLen(key) + 2 + jsonLen(item)
			i++
		}
		return n
	default: // null, or no kind
		return 4
	}
}

func quotedLen(s string) int {
	n := 2
	for i := 0; i < len(s); {
		r, w := utf8.DecodeRuneInString(s[i:])
		i += w
		switch {
		case r == '"' || r == '\\' || r == '\n' || r == '\r' || r == '\t' || r == '\b' || r == '\f':
			n += 2
		case r < 0x20 || r == 0x7f:
			n += 6
		case r < 0x80:
			n++
		case r >= 0x10000:
			n += 12
		default:
			n += 6
		}
	}
	return n
}
