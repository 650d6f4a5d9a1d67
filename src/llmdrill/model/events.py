"""Every kind of evidence event, in one catalogue (in the manner of Locust's events.py).

An event is `(ts, kind, detail)` in the evidence store: `ts` epoch seconds, `kind` one of
these, `detail` a JSON object whose keys are listed with each kind. Producers and checks
name kinds through this enum, never through string literals, so a kind cannot drift
between the module that writes it and the check that reads it. Plugins may record kinds
of their own (any string); the built-in checks never read those.
"""

from __future__ import annotations

from enum import StrEnum


class EventKind(StrEnum):
    # -- the run's own timeline (harness.runner) ---------------------------------------------
    PHASE_START = "phase_start"
    """A phase began. detail: phase."""
    PHASE_END = "phase_end"
    """A phase ran to its end. detail: phase."""
    PHASE_ENDED_EARLY = "phase_ended_early"
    """A phase with `end_early` ended before its planned end: the target was back.
    detail: phase, reason, saved_s."""
    FAULT_APPLIED = "fault_applied"
    """A fault was applied (after its revert action was journaled). detail: fault."""
    FAULT_BUSY = "fault_busy"
    """A fault with `when_busy` waited for its engine to serve requests before it was
    applied. detail: fault, met, running, min_running, polled_at (start of the poll that
    met it), waited_s, polls, metric, url, error."""
    FAULT_REVERTED = "fault_reverted"
    """A fault was reverted by the harness. detail: fault."""
    SCRAPE_FAILED = "scrape_failed"
    """A scrape of the engine's /metrics failed. detail: error."""
    GUARD_POLL_FAILED = "guard_poll_failed"
    """A guardrail's Prometheus/Alertmanager poll failed. detail: error."""
    PROMQL_FAILED = "promql_failed"
    """A PromQL range query at the run's end failed. detail: query, error."""
    PROBE_ERROR = "probe_error"
    """An active check's probe crashed. detail: check, kind, error."""
    LOAD_WORKER_LOST = "load_worker_lost"
    """A worker process of the distributed load (`load.processes` > 1) stopped sending
    heartbeats to Locust's master: its requests in flight are lost. detail: worker, pid,
    host, workers (still connected)."""
    SERVICE_STOP_FAILED = "service_stop_failed"
    """A helper of the run (load generator, scraper, watcher...) failed to stop. detail:
    service, error."""

    # -- client-side faults (faults.cancel_storm) ------------------------------------------
    STORM_WAVE = "storm_wave"
    """A cancel-storm wave was dropped. detail: fault, wave (0-based), started_at,
    dropped_at, streams, aborted, failed, errors {class: n}, tokens, abort_after."""

    # -- client-side faults (faults.request_flood) -----------------------------------------
    FLOOD_ARRIVALS = "flood_arrivals"
    """An open-loop request flood (`rate`) stopped. detail: fault, rate, concurrency,
    dropped (arrivals not sent because `concurrency` requests were in flight)."""

    # -- Docker (faults.docker_backend, probes.docker_events) ---------------------------------
    DOCKER_ACTION = "docker_action"
    """The Docker backend acted on a container. detail: fault, action, container, ..."""
    DOCKER_EVENT = "docker_event"
    """An event from the Docker engine (die, oom, start, kill, health_status...). detail:
    action, container, name, exit_code?, signal?"""
    DOCKER_STATE = "docker_state"
    """A container's state as inspected when its fault ended. detail: fault, container,
    status, oom_killed, finished_at, restart_count, limits?"""
    DOCKER_HOG = "docker_hog"
    """Whether a memory hog was still running when apply stopped watching. detail: fault,
    container, running."""

    # -- Kubernetes (faults.kubernetes, probes.kube_events) ---------------------------------
    KUBE_ACTION = "kube_action"
    """The Kubernetes backend acted, or one step of its action happened. detail: fault,
    action, step (delete, signal, cordon, evict, evict_refused, stop, start, scale,
    restart, resize, patch, drain_done, drain_incomplete, error), and what it touched (pods,
    node, deployment, ...)."""
    KUBE_POD = "kube_pod"
    """A pod's state changed, as the API's watch reported it. detail: source (fault or
    check), pod, owner, node, phase, ready, routable (Ready and not terminating),
    terminating, deleted, restarts, reasons (waiting/terminated reasons: OOMKilled,
    CrashLoopBackOff, ...), last_exit_code, memory_limit."""
    KUBE_NODE = "kube_node"
    """A node's Ready condition or schedulability changed. detail: source, node, ready
    (True, False or Unknown), unschedulable, reason."""

    KUBE_SERVING = "kube_serving"
    """One poll of a Deployment's own health URL by ready_serves. detail: check,
    deployment, url, ok, status, error, at (when the answer came)."""

    # -- active checks' probes (checks.*) ------------------------------------------------------
    CAPS_PROBE = "caps_probe"
    """One over-limit request of caps_enforced and its answer. detail: check, case, round,
    status, error_class, elapsed_s, ..."""
    CAPS_HEALTH = "caps_health"
    """The normal request after a caps round. detail: check, round, ok, elapsed_s."""
    HEALTH_POLL = "health_poll"
    """One poll of engine_healthy. detail: check, ok, status, elapsed_s."""
    RECOVERY_POLL = "recovery_poll"
    """One health poll of stream_recovery/warm_up. detail: check, ok, status."""
    TOKEN_PROBE = "token_probe"
    """One first-token probe of warm_up. detail: check, ok, ttft_s."""

    # -- alerting (harness.alert_watch, harness.webhook) ---------------------------------------
    ALERT_RULES = "alert_rules"
    """The alert rules Prometheus has loaded. detail: names, or error."""
    ALERT_POLL = "alert_poll"
    """One poll of Prometheus or Alertmanager. detail: source, ok, error?"""
    ALERT_STATE = "alert_state"
    """An alert's state seen by a poll. detail: source, alertname, state."""
    ALERT_NOTIFICATION = "alert_notification"
    """A notification the webhook receiver got from Alertmanager. detail: the payload's
    status, alertnames, ..."""
