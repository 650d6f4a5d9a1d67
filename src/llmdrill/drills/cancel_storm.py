"""Client-side fault: cancel_storm (being implemented)."""

from __future__ import annotations
