FROM python:3.11-slim
WORKDIR /app
# The dependencies first, in a layer of their own, at the releases tested: editing the code
# does not install them again.
COPY constraints.txt ./
RUN pip install --no-cache-dir -r constraints.txt
COPY pyproject.toml README.md LICENSE ./
COPY ingest ingest
COPY analytics analytics
COPY producers producers
COPY simulator simulator
COPY telemetry telemetry
RUN pip install --no-cache-dir --no-deps .
USER nobody
# The API; each worker's and the bridge's metrics (TELEMETRY_METRICS_PORT in compose.yaml).
EXPOSE 8000 9100
# Whichever service the container runs: its metrics port or the API's /healthz answers.
HEALTHCHECK --interval=15s --timeout=5s --retries=3 CMD ["telemetry", "healthcheck"]
CMD ["telemetry", "--help"]
