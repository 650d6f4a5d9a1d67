"""What every client of the harness (the load generator, cancel storms, request floods)
shares about the OpenAI-compatible API: prompts of a known token length, and the error
class of an HTTP status. Pure functions, importable from the gevent load process and the
harness alike.

A status that is neither a success nor an error (1xx, a 2xx other than the answer, a 3xx
redirect the client does not follow) is `protocol`: the server answered something an API
client cannot use, which is neither the client's fault (4xx) nor a server error (5xx).
"""

from __future__ import annotations

import random

# Each is one token for common tokenizers, so a prompt of n words is about n tokens.
WORDS = ("self", "return", "value", "data", "name", "import", "class", "def", "None", "list")


def make_prompt(tokens: int, rng: random.Random) -> str:
    """A prompt of about `tokens` tokens. A random number up front keeps the engine's
    prefix cache from sharing blocks between requests: every prompt is new work, and a
    KV-cache drill fills the cache it means to."""
    return prompt_head(rng) + prompt_tail(tokens, rng)


def prompt_head(rng: random.Random) -> str:
    """make_prompt's first word: the random number that makes a prompt new work."""
    return str(rng.randrange(1 << 30))


def prompt_tail(tokens: int, rng: random.Random) -> str:
    """make_prompt's words after its first: with a head of its own, one tail serves many
    requests (the load user draws it once per shape: 2 us a request saved)."""
    return "".join([" " + word for word in rng.choices(WORDS, k=tokens - 1)])


def status_error_class(status: int) -> str:
    """The error class of a response that is not the answer asked for."""
    if status == 429:
        return "http_429"
    if 400 <= status < 500:
        return "http_4xx"
    if status >= 500:
        return "http_5xx"
    return "protocol"
