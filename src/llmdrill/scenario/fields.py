"""Building blocks every spec uses: the strict base model, names, URLs, bounds, error
classes and client timeouts. It imports nothing of the scenario model, so fault and check
modules (and plugins) can define their specs with it while the model assembles them."""

from __future__ import annotations

from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, model_validator

from llmdrill.scenario.units import Duration, Fraction

NAME_PATTERN = r"^[a-z0-9][a-z0-9_.-]*$"


Name = Annotated[str, Field(pattern=NAME_PATTERN, max_length=63)]


def http_url(url: str) -> str:
    """An http(s) URL that every HTTP client can use, or a ValueError saying what is wrong.

    Refused at load time, so a typo never gets as far as a run: a URL with spaces or control
    characters, no host, an unclosed IPv6 bracket or a port that is not a number.
    """
    if not url.startswith(("http://", "https://")):
        raise ValueError(f"must start with http:// or https://, got '{url}'")
    if any(c.isspace() or not c.isprintable() for c in url):
        raise ValueError(f"must not contain spaces or control characters, got {url!r}")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"is not a valid URL ({exc}): '{url}'") from None
    if not parts.hostname:
        raise ValueError(f"has no host: '{url}'")
    if port == 0:
        raise ValueError(f"port 0 is not a port to connect to: '{url}'")
    return url


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Timeouts(Strict):
    connect: Duration = Field(default=5.0, description="Longest wait to open a connection.")
    read: Duration = Field(
        default=30.0, description="Longest wait for response headers or any next chunk."
    )
    total: Duration = Field(default=60.0, description="Deadline for one attempt, end to end.")


Api = Literal["chat", "completions"]


APIS: tuple[Api, ...] = ("chat", "completions")


class Bound(Strict):
    min: float | None = Field(
        default=None, description="Lowest allowed value (inclusive); give min, max or both."
    )
    max: float | None = Field(
        default=None, description="Highest allowed value (inclusive); give min, max or both."
    )

    @model_validator(mode="after")
    def _one(self) -> Bound:
        if self.min is None and self.max is None:
            raise ValueError("give min, max or both")
        return self


class DurationBound(Strict):
    min: Duration | None = Field(
        default=None, description="Lowest allowed value (inclusive); give min, max or both."
    )
    max: Duration | None = Field(
        default=None, description="Highest allowed value (inclusive); give min, max or both."
    )

    @model_validator(mode="after")
    def _one(self) -> DurationBound:
        if self.min is None and self.max is None:
            raise ValueError("give min, max or both")
        return self


class FractionBound(Strict):
    min: Fraction | None = Field(
        default=None, description="Lowest allowed value (inclusive); give min, max or both."
    )
    max: Fraction | None = Field(
        default=None, description="Highest allowed value (inclusive); give min, max or both."
    )

    @model_validator(mode="after")
    def _one(self) -> FractionBound:
        if self.min is None and self.max is None:
            raise ValueError("give min, max or both")
        return self


ErrorClass = Literal[
    "timeout",
    "connect",
    "reset",
    "incomplete_stream",
    "protocol",
    "http_4xx",
    "http_429",
    "http_5xx",
    "interrupted",
    "empty",
]


# How a request cut by a kill may end: the connection broke (closed before any answer is
# `protocol` to the load generator), or a gateway said 5xx.
CUT_CLASSES: tuple[ErrorClass, ...] = ("incomplete_stream", "reset", "connect", "protocol",
                                       "http_5xx")
