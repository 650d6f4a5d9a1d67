# llmdrill itself, for the runner of docker-compose.yml (or any CI job that prefers an
# image): `llmdrill` is the entry point, scenarios are mounted at /scenarios, reports go
# to /reports. Build: docker build -t llmdrill:local .
FROM python:3.11-slim
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 \
    LLMDRILL_STATE_DIR=/reports/.state
WORKDIR /opt/llmdrill
COPY pyproject.toml constraints.txt README.md ./
COPY src ./src
RUN pip install --no-cache-dir -c constraints.txt . \
    && useradd --create-home --uid 10001 llmdrill \
    && mkdir -p /reports && chown llmdrill /reports
COPY scenarios /scenarios
COPY deploy/docker/runner.sh /usr/local/bin/llmdrill-runner
# Root only where a Docker drill needs the engine's socket; see docker-compose.yml.
USER llmdrill
ENTRYPOINT ["llmdrill-runner"]
CMD ["run", "/scenarios", "--tag", "quickstart", "--out", "/reports", "--junit", "/reports/junit.xml"]
