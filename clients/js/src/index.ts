/**
 * @cartlytics/commerce: the cartlytics commerce analytics SDK for browsers and Node.js.
 *
 * ```js
 * import { Commerce } from '@cartlytics/commerce'
 * const commerce = new Commerce({ apiKey: 'your_key', baseUrl: 'https://analytics.example.com' })
 * await commerce.analytics.track('product_view', { productId: 'prod_abc123', userId: 'user_xyz789' })
 * const sales = await commerce.analytics.getSales({ period: '30d' })
 * ```
 *
 * The behaviour (ids, retries, batching, browsers) is docs/clients.md's.
 */

export { Commerce, type CommerceOptions } from "./commerce.js";
export {
  Analytics,
  type CustomersParams,
  type ExportOptions,
  type ExportParams,
  type ExportResult,
  type ExportSummary,
  type FunnelParams,
  type ProductsParams,
  type QueryParams,
  type RealtimeParams,
  type SalesParams,
  type TrackOptions,
} from "./analytics.js";
export { CommerceError, type ErrorCode, type FieldViolation } from "./errors.js";
export { MAX_EVENT_BYTES, type EventContext, type EventOptions, type Properties } from "./events.js";
export type { DeliveredEvent, FlushResult, StorageLike } from "./queue.js";
export type { CallOptions, FetchLike } from "./transport.js";
export { LIBRARY_NAME, VERSION } from "./runtime.js";

export type {
  AcceptedEventJson,
  BatchTrackEventsResponseJson,
  EventJson,
  RejectedEventJson,
  TrackEventResponseJson,
} from "./gen/analytics/ingest/v1/ingest_pb.js";
export type {
  CustomerValueJson,
  FunnelStageJson,
  GetCustomersResponseJson,
  GetFunnelResponseJson,
  GetProductsResponseJson,
  GetRealtimeResponseJson,
  GetSalesResponseJson,
  GrowthJson,
  PageVisitorsJson,
  ProductPerformanceJson,
  RunQueryResponseJson,
  SalesBucketJson,
} from "./gen/analytics/metrics/v1/metrics_pb.js";
