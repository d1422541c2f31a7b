package sdk_test

import (
	"context"
	"fmt"
	"log"
	"os"

	"github.com/cartlytics/cartlytics/clients/go/sdk"
)

// The spec's example: track a product view, read the sales overview, run a custom query.
// (Compiled, not run: it needs a server; the live tests run the same calls.)
func Example() {
	ctx := context.Background()
	key := os.Getenv("CARTLYTICS_API_KEY")
	client, err := sdk.NewClient(sdk.Config{APIKey: key, Endpoint: "127.0.0.1:50051"})
	if err != nil {
		log.Fatal(err)
	}
	defer client.Close()

	err = client.Analytics.Track(ctx, &sdk.AnalyticsEvent{
		Event:  "product_view",
		UserID: "user_xyz789",
		Properties: map[string]interface{}{
			"productId": "prod_abc123",
		},
	})
	if err != nil {
		log.Fatal(err)
	}
	sales, err := client.Analytics.GetSales(ctx, &sdk.SalesQuery{
		Period: "30d",
	})
	if err != nil {
		log.Fatal(err)
	}
	report, err := client.Analytics.Query(ctx, &sdk.AnalyticsQuery{
		Metrics:    []string{"revenue", "orders"},
		Dimensions: []string{"product_category"},
		Filters:    map[string]string{"period": "7d"},
	})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(sales.GetRevenue(), sales.GetOrders(), len(report.Rows))
}

// The batching mode: Enqueue returns at once; Close delivers what is queued.
func ExampleAnalyticsService_Enqueue() {
	client, err := sdk.NewClient(sdk.Config{
		APIKey:    os.Getenv("CARTLYTICS_API_KEY"),
		OnFailure: func(events []*sdk.AnalyticsEvent, err error) { log.Printf("%d events lost: %v", len(events), err) },
	})
	if err != nil {
		log.Fatal(err)
	}
	defer func() {
		if err := client.Close(); err != nil {
			log.Print(err) // *sdk.CloseError: how many events were not delivered
		}
	}()
	err = client.Analytics.Enqueue(&sdk.AnalyticsEvent{
		Event:       "page_view",
		AnonymousID: "anon_123",
		Properties:  map[string]interface{}{"page": "/"},
	})
	if err != nil {
		log.Print(err) // sdk.ErrQueueFull, sdk.ErrEventTooLarge or sdk.ErrClosed
	}
}
