"""The commerce model at query time: what a visitor, an order, a line item, a first order and a
product's figures are, each written once as SQL fragments (``cartlytics.common.storage.sql.Sql``)
that metrics and export both compose. docs/semantics.md states the rules; this package is their
one implementation when reading.

- **Visitor**: an event's ``visitor_id``, its ``userId``, else ``anonymousId``, else
  ``sessionId`` (ingest stores it so). A customer is the visitor of an order's first event.
- **Order** (``orders.py``): a (project, orderId). Its first ``order_completed`` by (timestamp,
  event id), over all time, is the order: its time, total, currency, visitor and line items are
  that event's; later events with the same orderId (duplicates: a store reporting an order again,
  a retry stored twice) never count. The argMin rule that picks that first event is written once
  (``orders.first_events``). Ingest lists every orderId stored more than once in ``order_dups``,
  so an orderId not listed has one stored event, which is its first: a period's orders are that
  period's rows of ``orders`` plus the first events of the few listed orderIds seen in it
  (``orders.orders_between``), never every order of all time grouped per query.
- **Line item** (``products.py``): a line of an order's first event (``order_items``, one row per
  (event, line); a retried event's lines may be stored twice and count once).
- **First order** (``customers.py``): a visitor's earliest order in any currency, over all time;
  it tells new customers from returning ones.
- **A product's figures** (``products.py``): over the line items of the distinct orders, revenue =
  sum(price * quantity), units = sum(quantity), orders = distinct orders listing it, buyers =
  distinct visitors of those orders.
- **A customer's figures** (``customers.py``): over the distinct orders, per visitor, orders =
  their count and revenue = the sum of their totals, first and last order times.

Every figure that sums amounts sums in Decimal128 (it cannot wrap). The materialized views that
keep the rollups these queries read are defined in ``rollups.py``.
"""
