"""llmdrill: chaos and failure drills for OpenAI-compatible LLM serving APIs."""

__version__ = "0.1.0"
