"""Ingest: topic routes, payload decoding, timestamps and cleaning of device messages."""
