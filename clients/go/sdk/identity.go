package sdk

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"strings"
	"sync"
	"unicode/utf8"
)

// MaxIDLength is the server's limit on a userId or anonymousId, in characters.
const MaxIDLength = 256

// visitor is the client's identity at the time an event is made: the ids it fills in for an
// event that names neither.
type visitor struct {
	userID      string
	anonymousID string
}

// identity is the client's visitor (docs/clients.md, "Identity"): an anonymousId made when the
// client is (or Config.AnonymousID), and the userId of the last Identify. Guarded by its mutex:
// Identify, Reset and the events of any goroutine see one consistent pair.
type identity struct {
	mu          sync.Mutex
	anonymousID string
	userID      string
}

func newIdentity(anonymousID string) *identity {
	if anonymousID == "" {
		anonymousID = newAnonymousID()
	}
	return &identity{anonymousID: anonymousID}
}

// current is the pair an event made now gets.
func (id *identity) current() visitor {
	id.mu.Lock()
	defer id.mu.Unlock()
	return visitor{userID: id.userID, anonymousID: id.anonymousID}
}

// newAnonymousID is a random UUID (version 4), as Segment's and PostHog's SDKs make them.
func newAnonymousID() string {
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic("cartlytics: no randomness: " + err.Error())
	}
	b[6] = b[6]&0x0f | 0x40 // version 4
	b[8] = b[8]&0x3f | 0x80 // RFC 4122 variant
	h := hex.EncodeToString(b[:])
	return h[0:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:32]
}

// checkID refuses an id the server would refuse on every event (empty, blank or too long).
func checkID(name, value string) error {
	if strings.TrimSpace(value) == "" {
		return fmt.Errorf("cartlytics: %s must not be empty", name)
	}
	if n := utf8.RuneCountInString(value); n > MaxIDLength {
		return fmt.Errorf("cartlytics: %s must be at most %d characters (%d)", name, MaxIDLength, n)
	}
	return nil
}

// Identify makes userID the client's user: every event made after the call (Track, Enqueue)
// that names neither a UserID nor an AnonymousID of its own carries both userID and the client's
// anonymousId, which is how the server links the anonymousId to the user (the first link of an
// anonymousId wins). It sends nothing: the link is made by the next event. Events already
// enqueued keep the ids they were enqueued with. An empty or blank userID, or one over 256
// characters, is an error (the client's user is unchanged). Safe for concurrent use.
func (a *AnalyticsService) Identify(userID string) error {
	if err := checkID("userID", userID); err != nil {
		return err
	}
	id := a.c.identity
	id.mu.Lock()
	defer id.mu.Unlock()
	id.userID = userID
	return nil
}

// Reset forgets the user of Identify and starts a new anonymousId (sign-out, as Segment's
// analytics.js reset): later events carry only the new anonymousId. Events already enqueued
// keep their ids. Safe for concurrent use.
func (a *AnalyticsService) Reset() {
	anonymousID := newAnonymousID()
	id := a.c.identity
	id.mu.Lock()
	defer id.mu.Unlock()
	id.userID, id.anonymousID = "", anonymousID
}

// AnonymousID is the client's current anonymousId (Config.AnonymousID, else a UUID made by
// NewClient or by the last Reset).
func (a *AnalyticsService) AnonymousID() string {
	return a.c.identity.current().anonymousID
}

// UserID is the user of the last Identify, "" before any or after Reset.
func (a *AnalyticsService) UserID() string {
	return a.c.identity.current().userID
}
