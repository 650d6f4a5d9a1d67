"""Client-side fault: request_flood (being implemented)."""

from __future__ import annotations
