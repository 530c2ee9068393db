# syntax=docker/dockerfile:1.7
# The optimizer and the coordinator: a slim CPU image (one image, the command picks the service).
#   docker build -f deploy/docker/service.Dockerfile -t promptclimb-service:0.1.0 .
#   docker run promptclimb-service:0.1.0 serve optimizer     # or: serve coordinator
ARG PYTHON_IMAGE=python:3.11.13-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
COPY pyproject.toml README.md ./
COPY promptclimb ./promptclimb
COPY services ./services
# No extras but postgres: the PostgreSQL driver for the coordinator's shared store (gpu overlay).
# The core package carries no torch; the check fails the build if one crept in.
# The extra's versions are pinned in pyproject.toml, which hadolint cannot read.
# hadolint ignore=DL3013
RUN pip install --no-cache-dir ".[postgres]" \
    && python -c "import promptclimb.cli, psycopg, importlib.util as u; assert u.find_spec('torch') is None"

FROM ${PYTHON_IMAGE} AS runtime
RUN groupadd --gid 10001 promptclimb \
    && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin promptclimb \
    && mkdir -p /var/lib/promptclimb /cache \
    && chown 10001:10001 /var/lib/promptclimb /cache
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HF_HUB_OFFLINE=1 \
    HOME=/tmp \
    XDG_CACHE_HOME=/cache \
    MPLCONFIGDIR=/tmp/matplotlib \
    PROMPTCLIMB_OPTIMIZER_HOST=0.0.0.0 \
    PROMPTCLIMB_OPTIMIZER_PORT=50051 \
    PROMPTCLIMB_OPTIMIZER_METRICS_PORT=9464 \
    PROMPTCLIMB_COORDINATOR_HOST=0.0.0.0 \
    PROMPTCLIMB_COORDINATOR_PORT=50051 \
    PROMPTCLIMB_COORDINATOR_METRICS_PORT=9464
WORKDIR /var/lib/promptclimb
EXPOSE 50051 9464
USER 10001:10001
ENTRYPOINT ["promptclimb"]
CMD ["serve", "coordinator"]
