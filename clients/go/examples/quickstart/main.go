// Command quickstart runs the spec's Go example against a cartlytics server:
//
//	CARTLYTICS_API_KEY=cak_... CARTLYTICS_ENDPOINT=127.0.0.1:50051 go run ./examples/quickstart
package main

import (
	"context"
	"fmt"
	"log"
	"os"
	"time"

	"github.com/cartlytics/cartlytics/clients/go/sdk"
)

func main() {
	key := os.Getenv("CARTLYTICS_API_KEY")
	endpoint := os.Getenv("CARTLYTICS_ENDPOINT")
	if endpoint == "" {
		endpoint = "127.0.0.1:50051"
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	client, err := sdk.NewClient(sdk.Config{APIKey: key, Endpoint: endpoint})
	if err != nil {
		log.Fatal(err)
	}
	defer client.Close()

	// Track event
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
	// Get sales overview
	sales, err := client.Analytics.GetSales(ctx, &sdk.SalesQuery{
		Period: "30d",
	})
	if err != nil {
		log.Fatal(err)
	}
	// Custom query
	report, err := client.Analytics.Query(ctx, &sdk.AnalyticsQuery{
		Metrics:    []string{"revenue", "orders"},
		Dimensions: []string{"product_category"},
		Filters:    map[string]string{"period": "7d"},
	})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("sales over %s: %.0f minor units of %s in %d orders\n",
		sales.GetPeriod(), sales.GetRevenue(), sales.GetCurrency(), sales.GetOrders())
	for _, row := range report.Rows {
		fmt.Printf("%v: revenue %v, orders %v\n", row["product_category"], row["revenue"], row["orders"])
	}
}
