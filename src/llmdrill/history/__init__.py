"""Run history: every run's verdict and key figures in an embedded store, trends across
invocations, regressions flagged, two runs compared."""
