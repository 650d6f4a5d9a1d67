"""A real nginx gateway in front of the real vLLM, healthy or deliberately broken.

Broken variants are how the tests prove a check can fail: one that turns 400s into 500s,
one that strips error bodies. (The gateway that keeps the engine generating after its
client left is a purpose-built relay: lingering_proxy.py.)
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

HEALTHY = """
            proxy_buffering off;
            proxy_ignore_client_abort off;
"""
TURNS_400_INTO_500 = """
            proxy_buffering off;
            proxy_intercept_errors on;
            error_page 400 =500 /internal-error;
"""
STRIPS_ERROR_BODIES = """
            proxy_buffering off;
            proxy_intercept_errors on;
            error_page 400 404 =400 /empty-error;
"""

# Sheds load: at most 4 requests reach the engine at once, the rest are refused at once
# with 429 (with or without a Retry-After telling clients when to come back).
SHEDS_LOAD_HTTP = "limit_conn_zone $server_addr zone=engine:1m;"
SHEDS_LOAD_WITH_RETRY_AFTER = """
            proxy_buffering off;
            limit_conn engine 4;
            limit_conn_status 429;
            add_header Retry-After 1 always;
"""
SHEDS_LOAD_WITHOUT_RETRY_AFTER = """
            proxy_buffering off;
            limit_conn engine 4;
            limit_conn_status 429;
"""

ERROR_500 = (
    '{"error":{"message":"Internal Server Error","type":"InternalServerError","code":500}}'
)

TEMPLATE = """
worker_processes 1;
daemon off;
pid {run}/nginx.pid;
error_log {run}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {run}/body;
    proxy_temp_path {run}/proxy;
    fastcgi_temp_path {run}/fastcgi;
    uwsgi_temp_path {run}/uwsgi;
    scgi_temp_path {run}/scgi;
    {http_extra}
    upstream engine {{ server {upstream}; keepalive 16; }}
    server {{
        listen 127.0.0.1:{port};
        location = /internal-error {{
            internal;
            default_type application/json;
            return 500 '{error_500}';
        }}
        location = /empty-error {{
            internal;
            return 400 '';
        }}
        location / {{
            proxy_pass http://engine;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_read_timeout 300s;
{directives}
        }}
    }}
}}
"""


def nginx_binary() -> str:
    found = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists()
                                      else None)
    if found is None:
        raise RuntimeError("nginx is not installed (make test installs nginx-light)")
    return found


@contextmanager
def nginx_gateway(run_dir: Path, port: int, directives: str,
                  upstream: str = "127.0.0.1:18000", http_extra: str = "") -> Iterator[str]:
    """Start nginx on 127.0.0.1:port with the given location directives (and http-level
    ones, such as a limit zone); yield its URL."""
    run_dir.mkdir(parents=True, exist_ok=True)
    conf = run_dir / "nginx.conf"
    conf.write_text(TEMPLATE.format(run=run_dir, port=port, upstream=upstream,
                                    directives=directives, error_500=ERROR_500,
                                    http_extra=http_extra))
    proc = subprocess.Popen([nginx_binary(), "-c", str(conf), "-p", str(run_dir)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 20
        while time.time() < deadline:
            try:
                httpx.get(f"{url}/v1/models", timeout=2)
                break
            except httpx.HTTPError:
                if proc.poll() is not None:
                    log = (run_dir / "error.log")
                    raise RuntimeError("nginx exited: " + (log.read_text() if log.exists()
                                                           else "")) from None
                time.sleep(0.2)
        yield url
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
