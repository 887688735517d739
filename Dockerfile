# The streamserve worker image: `docker compose up` builds and runs it next to Kafka.
#   docker build -t streamserve .
#   docker run --rm -e STREAMSERVE_BROKER=host:9092 -v "$PWD/registry:/registry:ro" -p 9100:9100 streamserve
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# Install from a throw-away source folder, so the running worker imports the
# installed package (with its agents/kafka package data), never a stray checkout.
COPY pyproject.toml README.md /tmp/src/
COPY pipeline /tmp/src/pipeline
COPY agents /tmp/src/agents
COPY models /tmp/src/models
RUN pip install /tmp/src && rm -rf /tmp/src

# Run unprivileged; the worker keeps its Faust table data under its working folder.
RUN useradd --create-home --uid 10001 streamserve \
    && mkdir -p /app \
    && chown streamserve:streamserve /app
USER streamserve
WORKDIR /app

ENV STREAMSERVE_BROKER=kafka:9092 \
    STREAMSERVE_REGISTRY=/registry \
    STREAMSERVE_HOME=/app/.streamserve \
    JAX_PLATFORMS=cpu

EXPOSE 9100
CMD ["streamserve", "worker", "--metrics-port", "9100"]
