"""The admin service: API keys of projects created, listed and revoked (gRPC only)."""
