// Package sdk is the Go client of cartlytics, the commerce analytics service: tracking events
// and reading sales, products, customers, funnels, realtime figures, custom queries and exports
// over gRPC. docs/clients.md is the behaviour contract it shares with the JavaScript and Python
// SDKs; this comment is its Go summary.
//
// # Usage
//
//	client, err := sdk.NewClient(sdk.Config{APIKey: key, Endpoint: "127.0.0.1:50051"})
//	if err != nil { ... }
//	defer client.Close()
//
//	err = client.Analytics.Track(ctx, &sdk.AnalyticsEvent{
//		Event:      "product_view",
//		UserID:     "user_xyz789",
//		Properties: map[string]interface{}{"productId": "prod_abc123"},
//	})
//	sales, err := client.Analytics.GetSales(ctx, &sdk.SalesQuery{Period: "30d"})
//	report, err := client.Analytics.Query(ctx, &sdk.AnalyticsQuery{
//		Metrics:    []string{"revenue", "orders"},
//		Dimensions: []string{"product_category"},
//		Filters:    map[string]string{"period": "7d"},
//	})
//
// Endpoint is host:port, dialled in plaintext unless Config.TLS or Config.TLSConfig is set (an
// "https://" prefix implies TLS). Every call carries `authorization: Bearer <APIKey>`.
//
// # Results
//
// The reads return the generated response messages under short aliases (SalesReport is
// metricsv1.GetSalesResponse, ...): amounts are whole numbers of minor units in float64 fields
// (revenue 6578 is 65.78 in a two-decimal currency). Query returns QueryResult.Rows as
// []map[string]any: each dimension a string, each metric a float64. Export streams the file's
// bytes into an io.Writer.
//
// # Identity
//
// A client has an anonymousId (Config.AnonymousID, else a random UUID v4 made by NewClient) and,
// after Analytics.Identify(userID), a userId. An event that names neither a UserID nor an
// AnonymousID (fields or lifted properties) is sent with the client's: the anonymousId alone
// before Identify, both after, which is how the server links the anonymousId to the user.
// Identify sends nothing and does not change events already enqueued; an event naming its own
// ids is sent with those only. Analytics.Reset (sign-out) forgets the user and starts a new
// anonymousId; Analytics.AnonymousID and Analytics.UserID read them. All are safe for
// concurrent use. In a server handling many people, pass each event's ids instead.
//
// # Errors
//
// A call that fails returns an *Error (use errors.As) with the canonical code, the HTTP status
// it stands for, the message, the google.rpc.BadRequest field violations, the ErrorInfo reason
// and the RetryInfo delay. The batching mode also returns ErrQueueFull, ErrEventTooLarge and
// ErrClosed (use errors.Is); Close returns a *CloseError counting undelivered events.
//
// # Delivery
//
// Track sends one event and returns once it is stored (TrackWithResult also returns the stored
// id and timestamp). Every event gets an id (evt_ + 32 hex digits) before its first attempt
// and keeps it through retries, so the server stores it once; sentAt is stamped at each
// attempt; context.library is {name: "cartlytics-go", version: Version} unless set. An event
// without a Timestamp gets the time of the Track or Enqueue call.
//
// Retries: UNAVAILABLE, an attempt's timeout (Config.Timeout) and RESOURCE_EXHAUSTED (waiting
// at least its RetryInfo delay) are retried, up to Config.MaxRetries times, with exponential
// backoff and full jitter (retry n waits a random time in [0, min(MaxBackoff,
// MinBackoff*2^(n-1))]), never past the context's deadline. INVALID_ARGUMENT and every other
// code are not (ABORTED with reason EVENT_IN_FLIGHT, which the server answers "so the client
// retries", is). Reads are retried by the same rules; Export only until its first byte was
// written.
//
// Enqueue is the batching mode: it queues the event (bounded by Config.MaxQueueEvents and
// MaxQueueBytes; a full queue is ErrQueueFull, never a wait) and returns at once. A background
// goroutine sends BatchTrackEvents requests when FlushAt events are queued, when the queue
// reaches MaxBatchBytes, and every FlushInterval; a request is retried by the rules above.
// Config.OnSuccess gets the stored events, Config.OnFailure the refused ones (each with its own
// *Error naming its fields, not retried) and those of a batch that failed for good; each
// event's outcome is reported once. An event refused only because its id is in flight (field
// "id": an earlier attempt of the same batch is still being stored) is not a failure: it is
// sent again, same id, after a backoff, and its acknowledgement goes to OnSuccess; the batch's
// retries and these resends share one budget (MaxRetries), after which it goes to OnFailure
// (ABORTED, reason EVENT_IN_FLIGHT). Flush waits until every event enqueued before it has an
// outcome, resent ones included; Close stops accepting events, flushes within
// Config.CloseTimeout and closes the connection. Events still queued when the program exits
// without Close are lost.
package sdk
