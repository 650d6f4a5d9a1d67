"""The data model checks, faults and reports share: what a run observed (requests, metric
samples, typed evidence events, in the evidence store), the run context a fault or check
receives, the canonical run result, and the verdict rules that rank statuses.

It depends on nothing else in llmdrill but the scenario model and the error hierarchy, so
every layer above it (faults, checks, monitoring, the harness, reports) can use it.
"""
