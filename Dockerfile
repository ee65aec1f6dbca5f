FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY ingest ingest
COPY analytics analytics
COPY producers producers
COPY simulator simulator
COPY telemetry telemetry
RUN pip install --no-cache-dir .
USER nobody
CMD ["telemetry", "--help"]
