# The GPU worker image (`sgmim worker`): Celery worker + the DeepSpeed trainer it launches.
#
#     docker build -f deploy/worker.Dockerfile -t sgmim-worker:0.1.0 .
#
# Base: NVIDIA's CUDA *runtime* image. PyPI's torch 2.14.1 is a CUDA 13.0 build that brings its
# own CUDA, cuDNN and NCCL libraries as nvidia-* wheels; the base image adds the driver hook-up
# (NVIDIA_* variables, compat check: the host needs an NVIDIA driver >= 580). No nvcc: the
# trainer needs no DeepSpeed JIT-compiled op (the optimiser is torch's fused AdamW given to
# DeepSpeed as client optimiser, bf16 goes through DeepSpeed's torch_autocast), and DeepSpeed is
# installed with DS_BUILD_OPS=0. A job that asks for a DeepSpeed op (e.g. its FusedAdam or
# CPUAdam) would need the -devel image instead.
#
# Python 3.11 (Ubuntu 24.04 ships 3.12) is a python-build-standalone interpreter installed by
# a pinned uv; the venv and the interpreter are copied into the runtime stage.
#
# Python dependencies have one source of truth, pyproject.toml: the builder runs
# `pip install .`; the only packages named here are the pinned torch/torchvision pair of
# pyproject.toml, installed first (as the Makefile does).

FROM ghcr.io/astral-sh/uv:0.9.24 AS uv

FROM nvidia/cuda:13.0.1-runtime-ubuntu24.04 AS builder
COPY --from=uv /uv /usr/local/bin/uv
ENV UV_PYTHON_INSTALL_DIR=/opt/python \
    UV_PYTHON_PREFERENCE=only-managed \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    DS_BUILD_OPS=0
RUN uv python install 3.11.14 \
    && "$(uv python find 3.11.14)" -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
RUN pip install torch==2.14.1 torchvision==0.29.1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY sgmim ./sgmim
COPY service ./service
COPY worker ./worker
RUN pip install . && pip check

FROM nvidia/cuda:13.0.1-runtime-ubuntu24.04 AS runtime
RUN groupadd --system --gid 10001 sgmim \
    && useradd --system --uid 10001 --gid sgmim --home-dir /var/lib/sgmim --shell /usr/sbin/nologin sgmim \
    && install -d -o sgmim -g sgmim -m 0750 /var/lib/sgmim /var/lib/sgmim/artifacts \
    && install -d -o sgmim -g sgmim -m 0755 /datasets
COPY --from=builder /opt/python /opt/python
COPY --from=builder /opt/venv /opt/venv
COPY deploy/healthcheck.py /usr/local/bin/sgmim-healthcheck
RUN chmod 0755 /usr/local/bin/sgmim-healthcheck
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility \
    SGMIM_DATA_DIR=/var/lib/sgmim \
    SGMIM_ARTIFACT_ROOT=/var/lib/sgmim/artifacts
USER sgmim
WORKDIR /var/lib/sgmim
CMD ["sgmim", "worker"]
