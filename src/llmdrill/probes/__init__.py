"""Telemetry sources: the engine's /metrics endpoint and HTTP probes."""
