"""HTTP API (FastAPI, /v1)."""
