from cartlytics_protos.analytics.options.v1 import options_pb2 as _options_pb2
from google.api import annotations_pb2 as _annotations_pb2
from google.protobuf import struct_pb2 as _struct_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class GetSalesRequest(_message.Message):
    __slots__ = ("period", "granularity", "currency", "timezone")
    PERIOD_FIELD_NUMBER: _ClassVar[int]
    GRANULARITY_FIELD_NUMBER: _ClassVar[int]
    CURRENCY_FIELD_NUMBER: _ClassVar[int]
    TIMEZONE_FIELD_NUMBER: _ClassVar[int]
    period: str
    granularity: str
    currency: str
    timezone: str
    def __init__(self, period: _Optional[str] = ..., granularity: _Optional[str] = ..., currency: _Optional[str] = ..., timezone: _Optional[str] = ...) -> None: ...

class Growth(_message.Message):
    __slots__ = ("revenue", "orders")
    REVENUE_FIELD_NUMBER: _ClassVar[int]
    ORDERS_FIELD_NUMBER: _ClassVar[int]
    revenue: float
    orders: float
    def __init__(self, revenue: _Optional[float] = ..., orders: _Optional[float] = ...) -> None: ...

class SalesBucket(_message.Message):
    __slots__ = ("date", "revenue", "orders")
    DATE_FIELD_NUMBER: _ClassVar[int]
    REVENUE_FIELD_NUMBER: _ClassVar[int]
    ORDERS_FIELD_NUMBER: _ClassVar[int]
    date: str
    revenue: float
    orders: int
    def __init__(self, date: _Optional[str] = ..., revenue: _Optional[float] = ..., orders: _Optional[int] = ...) -> None: ...

class GetSalesResponse(_message.Message):
    __slots__ = ("period", "revenue", "orders", "average_order_value", "currency", "growth", "series")
    PERIOD_FIELD_NUMBER: _ClassVar[int]
    REVENUE_FIELD_NUMBER: _ClassVar[int]
    ORDERS_FIELD_NUMBER: _ClassVar[int]
    AVERAGE_ORDER_VALUE_FIELD_NUMBER: _ClassVar[int]
    CURRENCY_FIELD_NUMBER: _ClassVar[int]
    GROWTH_FIELD_NUMBER: _ClassVar[int]
    SERIES_FIELD_NUMBER: _ClassVar[int]
    period: str
    revenue: float
    orders: int
    average_order_value: float
    currency: str
    growth: Growth
    series: _containers.RepeatedCompositeFieldContainer[SalesBucket]
    def __init__(self, period: _Optional[str] = ..., revenue: _Optional[float] = ..., orders: _Optional[int] = ..., average_order_value: _Optional[float] = ..., currency: _Optional[str] = ..., growth: _Optional[_Union[Growth, _Mapping]] = ..., series: _Optional[_Iterable[_Union[SalesBucket, _Mapping]]] = ...) -> None: ...

class GetProductsRequest(_message.Message):
    __slots__ = ("period", "limit", "currency", "timezone")
    PERIOD_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    CURRENCY_FIELD_NUMBER: _ClassVar[int]
    TIMEZONE_FIELD_NUMBER: _ClassVar[int]
    period: str
    limit: int
    currency: str
    timezone: str
    def __init__(self, period: _Optional[str] = ..., limit: _Optional[int] = ..., currency: _Optional[str] = ..., timezone: _Optional[str] = ...) -> None: ...

class ProductPerformance(_message.Message):
    __slots__ = ("product_id", "name", "revenue", "units_sold", "conversion_rate")
    PRODUCT_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    REVENUE_FIELD_NUMBER: _ClassVar[int]
    UNITS_SOLD_FIELD_NUMBER: _ClassVar[int]
    CONVERSION_RATE_FIELD_NUMBER: _ClassVar[int]
    product_id: str
    name: str
    revenue: float
    units_sold: float
    conversion_rate: float
    def __init__(self, product_id: _Optional[str] = ..., name: _Optional[str] = ..., revenue: _Optional[float] = ..., units_sold: _Optional[float] = ..., conversion_rate: _Optional[float] = ...) -> None: ...

class GetProductsResponse(_message.Message):
    __slots__ = ("top_sellers",)
    TOP_SELLERS_FIELD_NUMBER: _ClassVar[int]
    top_sellers: _containers.RepeatedCompositeFieldContainer[ProductPerformance]
    def __init__(self, top_sellers: _Optional[_Iterable[_Union[ProductPerformance, _Mapping]]] = ...) -> None: ...

class GetCustomersRequest(_message.Message):
    __slots__ = ("period", "limit", "currency", "timezone")
    PERIOD_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    CURRENCY_FIELD_NUMBER: _ClassVar[int]
    TIMEZONE_FIELD_NUMBER: _ClassVar[int]
    period: str
    limit: int
    currency: str
    timezone: str
    def __init__(self, period: _Optional[str] = ..., limit: _Optional[int] = ..., currency: _Optional[str] = ..., timezone: _Optional[str] = ...) -> None: ...

class CustomerValue(_message.Message):
    __slots__ = ("customer_id", "orders", "revenue")
    CUSTOMER_ID_FIELD_NUMBER: _ClassVar[int]
    ORDERS_FIELD_NUMBER: _ClassVar[int]
    REVENUE_FIELD_NUMBER: _ClassVar[int]
    customer_id: str
    orders: int
    revenue: float
    def __init__(self, customer_id: _Optional[str] = ..., orders: _Optional[int] = ..., revenue: _Optional[float] = ...) -> None: ...

class GetCustomersResponse(_message.Message):
    __slots__ = ("period", "currency", "total_customers", "new_customers", "returning_customers", "repeat_purchase_rate", "revenue_per_customer", "top_customers")
    PERIOD_FIELD_NUMBER: _ClassVar[int]
    CURRENCY_FIELD_NUMBER: _ClassVar[int]
    TOTAL_CUSTOMERS_FIELD_NUMBER: _ClassVar[int]
    NEW_CUSTOMERS_FIELD_NUMBER: _ClassVar[int]
    RETURNING_CUSTOMERS_FIELD_NUMBER: _ClassVar[int]
    REPEAT_PURCHASE_RATE_FIELD_NUMBER: _ClassVar[int]
    REVENUE_PER_CUSTOMER_FIELD_NUMBER: _ClassVar[int]
    TOP_CUSTOMERS_FIELD_NUMBER: _ClassVar[int]
    period: str
    currency: str
    total_customers: int
    new_customers: int
    returning_customers: int
    repeat_purchase_rate: float
    revenue_per_customer: float
    top_customers: _containers.RepeatedCompositeFieldContainer[CustomerValue]
    def __init__(self, period: _Optional[str] = ..., currency: _Optional[str] = ..., total_customers: _Optional[int] = ..., new_customers: _Optional[int] = ..., returning_customers: _Optional[int] = ..., repeat_purchase_rate: _Optional[float] = ..., revenue_per_customer: _Optional[float] = ..., top_customers: _Optional[_Iterable[_Union[CustomerValue, _Mapping]]] = ...) -> None: ...

class GetFunnelRequest(_message.Message):
    __slots__ = ("period", "steps", "window", "timezone")
    PERIOD_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    WINDOW_FIELD_NUMBER: _ClassVar[int]
    TIMEZONE_FIELD_NUMBER: _ClassVar[int]
    period: str
    steps: _containers.RepeatedScalarFieldContainer[str]
    window: int
    timezone: str
    def __init__(self, period: _Optional[str] = ..., steps: _Optional[_Iterable[str]] = ..., window: _Optional[int] = ..., timezone: _Optional[str] = ...) -> None: ...

class FunnelStage(_message.Message):
    __slots__ = ("name", "count", "rate")
    NAME_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    RATE_FIELD_NUMBER: _ClassVar[int]
    name: str
    count: int
    rate: float
    def __init__(self, name: _Optional[str] = ..., count: _Optional[int] = ..., rate: _Optional[float] = ...) -> None: ...

class GetFunnelResponse(_message.Message):
    __slots__ = ("stages", "conversion_rate")
    STAGES_FIELD_NUMBER: _ClassVar[int]
    CONVERSION_RATE_FIELD_NUMBER: _ClassVar[int]
    stages: _containers.RepeatedCompositeFieldContainer[FunnelStage]
    conversion_rate: float
    def __init__(self, stages: _Optional[_Iterable[_Union[FunnelStage, _Mapping]]] = ..., conversion_rate: _Optional[float] = ...) -> None: ...

class GetRealtimeRequest(_message.Message):
    __slots__ = ("timezone", "currency")
    TIMEZONE_FIELD_NUMBER: _ClassVar[int]
    CURRENCY_FIELD_NUMBER: _ClassVar[int]
    timezone: str
    currency: str
    def __init__(self, timezone: _Optional[str] = ..., currency: _Optional[str] = ...) -> None: ...

class PageVisitors(_message.Message):
    __slots__ = ("page", "visitors")
    PAGE_FIELD_NUMBER: _ClassVar[int]
    VISITORS_FIELD_NUMBER: _ClassVar[int]
    page: str
    visitors: int
    def __init__(self, page: _Optional[str] = ..., visitors: _Optional[int] = ...) -> None: ...

class GetRealtimeResponse(_message.Message):
    __slots__ = ("active_visitors", "orders_today", "revenue_today", "top_pages")
    ACTIVE_VISITORS_FIELD_NUMBER: _ClassVar[int]
    ORDERS_TODAY_FIELD_NUMBER: _ClassVar[int]
    REVENUE_TODAY_FIELD_NUMBER: _ClassVar[int]
    TOP_PAGES_FIELD_NUMBER: _ClassVar[int]
    active_visitors: int
    orders_today: int
    revenue_today: float
    top_pages: _containers.RepeatedCompositeFieldContainer[PageVisitors]
    def __init__(self, active_visitors: _Optional[int] = ..., orders_today: _Optional[int] = ..., revenue_today: _Optional[float] = ..., top_pages: _Optional[_Iterable[_Union[PageVisitors, _Mapping]]] = ...) -> None: ...

class RunQueryRequest(_message.Message):
    __slots__ = ("metrics", "dimensions", "filters", "order_by", "limit")
    class FiltersEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    METRICS_FIELD_NUMBER: _ClassVar[int]
    DIMENSIONS_FIELD_NUMBER: _ClassVar[int]
    FILTERS_FIELD_NUMBER: _ClassVar[int]
    ORDER_BY_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    metrics: _containers.RepeatedScalarFieldContainer[str]
    dimensions: _containers.RepeatedScalarFieldContainer[str]
    filters: _containers.ScalarMap[str, str]
    order_by: str
    limit: int
    def __init__(self, metrics: _Optional[_Iterable[str]] = ..., dimensions: _Optional[_Iterable[str]] = ..., filters: _Optional[_Mapping[str, str]] = ..., order_by: _Optional[str] = ..., limit: _Optional[int] = ...) -> None: ...

class RunQueryResponse(_message.Message):
    __slots__ = ("rows",)
    ROWS_FIELD_NUMBER: _ClassVar[int]
    rows: _containers.RepeatedCompositeFieldContainer[_struct_pb2.Struct]
    def __init__(self, rows: _Optional[_Iterable[_Union[_struct_pb2.Struct, _Mapping]]] = ...) -> None: ...
