"""Test and demo stacks started by the project's own scripts: the local one (real vLLM on
CPU + Toxiproxy), a Docker engine, a single-node Kubernetes cluster."""

from llmdrill.errors import LlmdrillError


class StackError(LlmdrillError):
    """A stack cannot be installed or started (the message names the log or the step)."""
