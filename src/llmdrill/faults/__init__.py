"""Fault injectors, one module per backend, and the revert registry cleanup uses."""
