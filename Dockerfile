# The streamserve worker image: `docker compose up` builds and runs it next to Kafka.
#   docker build -t streamserve .
#   docker run --rm -e STREAMSERVE_BROKER=host:9092 -v "$PWD/registry:/registry:ro" -p 9100:9100 streamserve
# The GPU image (ops/kubernetes/overlays/gpu) installs the gpu extra, JAX with CUDA 12 from
# its pip wheels, so this base image serves; the host needs only the NVIDIA driver:
#   docker build --build-arg EXTRAS=gpu --build-arg JAX_PLATFORMS=cuda -t streamserve:gpu .
FROM python:3.11-slim

# Optional extras of pyproject.toml to install with the package, e.g. "gpu"; and the
# JAX platform the worker runs on (cuda for the gpu extra: a missing GPU then fails
# loudly instead of serving on the CPU).
ARG EXTRAS=""
ARG JAX_PLATFORMS=cpu

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# Install from a throw-away source folder, so the running worker imports the
# installed package (with its agents/dev/kafka package data), never a stray checkout.
COPY pyproject.toml README.md /tmp/src/
COPY pipeline /tmp/src/pipeline
COPY agents /tmp/src/agents
COPY models /tmp/src/models
COPY streamserve /tmp/src/streamserve
RUN pip install "/tmp/src${EXTRAS:+[$EXTRAS]}" && rm -rf /tmp/src

# Run unprivileged; the worker keeps its Faust table data under its working folder.
RUN useradd --create-home --uid 10001 streamserve \
    && mkdir -p /app \
    && chown streamserve:streamserve /app
USER streamserve
WORKDIR /app

ENV STREAMSERVE_BROKER=kafka:9092 \
    STREAMSERVE_REGISTRY=/registry \
    STREAMSERVE_HOME=/app/.streamserve \
    JAX_PLATFORMS=${JAX_PLATFORMS}

EXPOSE 9100
CMD ["streamserve", "worker", "--metrics-port", "9100"]
