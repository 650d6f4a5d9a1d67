"""Load generation: a Locust user for OpenAI-compatible APIs, run in its own process."""

from pathlib import Path


def locustfile_path() -> Path:
    return Path(__file__).with_name("locustfile.py")
