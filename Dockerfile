# The example worker of docker-compose.yml: kyu-trio with examples/load.py, a worker
# that serves metrics on 0.0.0.0:$KYU_METRICS_PORT and feeds itself a mixed workload.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1

WORKDIR /app

# The package first (the `binary` extra: psycopg with its own libpq, no compiler), then
# the example.
COPY pyproject.toml README.md LICENSE ./
COPY kyu_trio ./kyu_trio
RUN pip install '.[binary]' \
    && useradd --system --no-create-home --uid 10001 kyu

COPY examples ./examples

# Listen on every interface of the container, so that Prometheus can scrape it.
ENV KYU_METRICS_HOST=0.0.0.0 \
    KYU_METRICS_PORT=9090
EXPOSE 9090

USER kyu
# Exec form: Python is PID 1 and gets SIGTERM from `docker compose stop` (graceful stop).
CMD ["python", "examples/load.py"]
