"""cartlytics: a commerce analytics service.

Import roots (docs/architecture.md), layered app → services → common:
- ``cartlytics.cli``, ``cartlytics.modules``: the app (CLI and run targets) wiring the rest.
- ``services.ingest``, ``services.metrics``, ``services.export``, ``services.admin``: the gRPC
  services (sources under ``services/``), and ``gateway``: the in-process REST/JSON gateway
  (``gateway/``); none imports another.
- ``cartlytics.common``: the shared library (config, storage, auth, errors, logging, servers), and
  ``cartlytics.gen``: code generated from ``proto/``.
"""

__version__ = "0.1.0"
