"""The HTTP API (FastAPI): one router per resource, mounted by ``app.create_app``."""
