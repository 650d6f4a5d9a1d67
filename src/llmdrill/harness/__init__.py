"""Plan compiler, runner, journal, evidence store and the canonical run result."""
