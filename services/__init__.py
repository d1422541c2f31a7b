"""The card's microservices, one package each: ingest, metrics, export and admin.

Each imports only ``cartlytics.common`` (and the generated contracts), never another service;
the run targets in ``cartlytics.modules`` wire them (see docs/architecture.md).
"""
