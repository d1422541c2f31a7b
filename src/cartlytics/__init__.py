"""cartlytics: a commerce analytics service.

Packages:
- ``cartlytics.common``: the shared library (config, storage, auth, errors, logging, servers).
- ``cartlytics.ingest``, ``cartlytics.metrics``, ``cartlytics.export``: the three gRPC services
  (sources under ``services/``).
- ``cartlytics.gateway``: the REST/JSON gateway that runs in-process (sources under ``gateway/``).
- ``cartlytics.gen``: code generated from ``proto/``.
"""

__version__ = "0.1.0"
