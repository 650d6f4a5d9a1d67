#!/bin/sh
# vllm-router (PyPI `vllm-router`, tested with 0.1.17) in front of vLLM replicas, with the
# settings llmdrill's gateway drills check. Usage:
#   vllm-router.sh http://127.0.0.1:8001 http://127.0.0.1:8002 ...
# Settings (environment): ROUTER_HOST (default 127.0.0.1), ROUTER_PORT (8000),
# ROUTER_METRICS_PORT (8001), VLLM_ROUTER (the binary, default `vllm-router` on PATH).
set -eu
if [ "$#" -eq 0 ]; then
  echo "usage: $0 WORKER_URL..." >&2
  exit 2
fi
host="${ROUTER_HOST:-127.0.0.1}"

# Why each setting:
# --policy round_robin                vLLM replicas are interchangeable; the default
#                                     (cache_aware) pins similar prompts to one replica.
# --worker-startup-check-interval 1   the router waits until every worker's /health is
#                                     200 before it serves; the default polls every 30 s.
# --health-check-interval-secs 1      the default checks workers once a minute: a dead
#   --health-check-timeout-secs 1     replica would get traffic for up to a minute. Here
#   --health-failure-threshold 2      two failed checks (about 2 s; 3-4 s when a hung
#   --health-success-threshold 2      replica times them out) remove it, two good ones
#                                     bring it back. vLLM's /health is 503 once its
#                                     engine died, though its API server still accepts.
# --retry-max-retries 3 ...           a request that failed on one worker (connection
#                                     error, 5xx) is sent again, to another worker, with
#                                     a short backoff; none after the stream started.
# --cb-failure-threshold 5 ...        five failed requests open that worker's circuit
#   --cb-timeout-duration-secs 5      breaker: no traffic for 5 s, then a trial. This acts
#                                     between health checks, on real traffic.
# --request-timeout-secs 120          the whole request, streams included (the default is
#                                     30 minutes): set it above your longest generation.
# --prometheus-host/-port             per-worker counters and health gauges:
#                                     vllm_router_processed_requests_total{worker=...},
#                                     vllm_router_worker_health, vllm_router_cb_state.
# Note: the router's own /health answers 503 ("Unhealthy servers: [...]") as soon as ONE
# worker is unhealthy, although it still serves through the others. Do not use it as the
# router's liveness probe; GET /workers lists each worker with `is_healthy`.
exec "${VLLM_ROUTER:-vllm-router}" \
  --host "$host" --port "${ROUTER_PORT:-8000}" \
  --worker-urls "$@" \
  --policy round_robin \
  --worker-startup-timeout-secs 120 --worker-startup-check-interval 1 \
  --health-check-interval-secs 1 --health-check-timeout-secs 1 \
  --health-failure-threshold 2 --health-success-threshold 2 \
  --retry-max-retries 3 --retry-initial-backoff-ms 50 --retry-max-backoff-ms 500 \
  --cb-failure-threshold 5 --cb-success-threshold 2 \
  --cb-timeout-duration-secs 5 --cb-window-duration-secs 30 \
  --request-timeout-secs 120 \
  --prometheus-host "$host" --prometheus-port "${ROUTER_METRICS_PORT:-8001}"
