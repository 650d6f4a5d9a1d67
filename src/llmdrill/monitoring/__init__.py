"""Alerting: the shipped alert rules (`llmdrill alert-rules`), Prometheus queries, the
alert watcher, the Alertmanager webhook receiver and the guardrail poller."""
