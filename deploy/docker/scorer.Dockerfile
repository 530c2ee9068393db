# syntax=docker/dockerfile:1.7
# The CLIP scorer on a CUDA PyTorch base. Build from the repository root:
#   docker build -f deploy/docker/scorer.Dockerfile -t promptclimb-scorer:0.1.0 .
# Weights are mounted read-only at /models (default target), or baked in with
#   docker build -f deploy/docker/scorer.Dockerfile --target scorer-baked -t promptclimb-scorer:0.1.0-baked .
# (which copies ./models from the build context). Nothing is downloaded at pod start: HF_HUB_OFFLINE=1.
ARG BASE_IMAGE=pytorch/pytorch:2.14.1-cuda12.8-cudnn9-runtime

FROM ${BASE_IMAGE} AS app
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# CUDA wheel index for torchvision so it matches the base image's CUDA torch.
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /app
COPY pyproject.toml README.md ./
COPY promptclimb ./promptclimb
COPY services ./services
# torch stays the base image's CUDA build (2.14.1+cuXXX satisfies the ==2.14.1 pin).
# The extra's versions are pinned in pyproject.toml, which hadolint cannot read.
# hadolint ignore=DL3013
RUN pip install --no-cache-dir --extra-index-url "${TORCH_INDEX_URL}" torchvision==0.29.1 ".[scorer]" \
    && python -c "import promptclimb, open_clip, torch; print(torch.__version__)"
# A fixed numeric uid so that runAsNonRoot can verify it without reading /etc/passwd.
RUN groupadd --gid 10001 promptclimb \
    && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin promptclimb \
    && mkdir -p /models /data /cache \
    && chown 10001:10001 /cache
# Offline by default; caches go to /cache and /tmp, which Kubernetes mounts as emptyDirs because the
# root filesystem is read-only there.
ENV HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    HOME=/tmp \
    XDG_CACHE_HOME=/cache \
    HF_HOME=/cache/huggingface \
    TORCH_HOME=/cache/torch \
    MPLCONFIGDIR=/tmp/matplotlib \
    PROMPTCLIMB_SCORER_HOST=0.0.0.0 \
    PROMPTCLIMB_SCORER_PORT=50051 \
    PROMPTCLIMB_SCORER_METRICS_PORT=9464
EXPOSE 50051 9464

# Weights baked into the image: ./models in the build context becomes /models (read-only for uid 10001).
FROM app AS scorer-baked
COPY models /models
USER 10001:10001
ENTRYPOINT ["promptclimb"]
CMD ["serve", "scorer"]

# Default target: weights come from a read-only volume mounted at /models.
FROM app AS scorer
VOLUME ["/models"]
USER 10001:10001
ENTRYPOINT ["promptclimb"]
CMD ["serve", "scorer"]
