"""Check kind module (being implemented)."""

from __future__ import annotations
