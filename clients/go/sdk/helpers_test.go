package sdk_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"testing"
	"time"

	"github.com/cartlytics/cartlytics/clients/go/sdk"
)

// liveStack returns the gRPC target and key of a live stack from CARTLYTICS_TEST_* (prefix ""
// for the main stack, "THROTTLED_" for the throttled one), skipping the test without them
// unless CARTLYTICS_TEST_REQUIRE=1.
func liveStack(t *testing.T, prefix string) (target, key string) {
	t.Helper()
	target = os.Getenv("CARTLYTICS_TEST_" + prefix + "GRPC")
	key = os.Getenv("CARTLYTICS_TEST_" + prefix + "KEY")
	if target == "" || key == "" {
		if os.Getenv("CARTLYTICS_TEST_REQUIRE") == "1" {
			t.Fatalf("CARTLYTICS_TEST_%sGRPC and CARTLYTICS_TEST_%sKEY are required (CARTLYTICS_TEST_REQUIRE=1)", prefix, prefix)
		}
		t.Skipf("no live stack: set CARTLYTICS_TEST_%sGRPC and CARTLYTICS_TEST_%sKEY", prefix, prefix)
	}
	return target, key
}

// newClient makes a client of the main stack (or of the throttled one, prefix "THROTTLED_"),
// closed at the end of the test.
func newClient(t *testing.T, prefix string, cfg sdk.Config) *sdk.Client {
	t.Helper()
	target, key := liveStack(t, prefix)
	cfg.APIKey, cfg.Endpoint = key, target
	client, err := sdk.NewClient(cfg)
	if err != nil {
		t.Fatalf("NewClient: %v", err)
	}
	t.Cleanup(func() { _ = client.Close() })
	return client
}

func testContext(t *testing.T, d time.Duration) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// unique is prefix plus random hex digits: names, ids and orders no other run uses.
func unique(prefix string) string {
	var b [6]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic(err)
	}
	return prefix + hex.EncodeToString(b[:])
}

// eventually retries check until it returns nil or the timeout passes (the reads may lag the
// acknowledgement a little), then fails with its last error.
func eventually(t *testing.T, timeout time.Duration, check func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		err := check()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatal(err)
		}
		time.Sleep(300 * time.Millisecond)
	}
}

// countEvents is the project's number of distinct events named name today (RunQuery).
func countEvents(ctx context.Context, client *sdk.Client, name string) (int, error) {
	res, err := client.Analytics.Query(ctx, &sdk.AnalyticsQuery{
		Metrics:    []string{"events"},
		Dimensions: []string{"event"},
		Filters:    map[string]string{"event": name, "period": "1d"},
	})
	if err != nil {
		return 0, err
	}
	total := 0
	for _, row := range res.Rows {
		if row["event"] != name {
			return 0, fmt.Errorf("row of another event: %v", row)
		}
		n, ok := row["events"].(float64)
		if !ok {
			return 0, fmt.Errorf("events is not a number: %v", row)
		}
		total += int(n)
	}
	return total, nil
}

// expectCount waits until the project holds exactly want events named name.
func expectCount(t *testing.T, ctx context.Context, client *sdk.Client, name string, want int) {
	t.Helper()
	eventually(t, 30*time.Second, func() error {
		got, err := countEvents(ctx, client, name)
		if err != nil {
			return err
		}
		if got != want {
			return fmt.Errorf("events named %s: got %d, want %d", name, got, want)
		}
		return nil
	})
}

// customEvent is a valid custom event of the given name.
func customEvent(name string, i int) *sdk.AnalyticsEvent {
	return &sdk.AnalyticsEvent{
		Event:       name,
		AnonymousID: "anon_go_sdk",
		Properties:  map[string]interface{}{"i": i},
	}
}
