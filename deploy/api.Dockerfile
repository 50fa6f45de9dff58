# The API image (`sgmim serve`): FastAPI + Alembic migrations. No GPU: torch and torchvision
# (needed because the job-spec schema lives in the sgmim package) are the CPU builds.
#
#     docker build -f deploy/api.Dockerfile -t sgmim-api:0.1.0 .
#
# Python dependencies have one source of truth, pyproject.toml: the builder installs the
# project (`pip install .`) into a virtual environment that the runtime stage copies. The only
# package named here is the pinned torch/torchvision pair of pyproject.toml, installed first
# from the CPU index so that `pip install .` finds it satisfied (2.14.1+cpu satisfies ==2.14.1).

FROM python:3.11.14-slim-bookworm AS builder
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
RUN pip install --index-url "${TORCH_INDEX_URL}" torch==2.14.1 torchvision==0.29.1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY sgmim ./sgmim
COPY service ./service
COPY worker ./worker
RUN pip install . && pip check

FROM python:3.11.14-slim-bookworm AS runtime
RUN groupadd --system --gid 10001 sgmim \
    && useradd --system --uid 10001 --gid sgmim --home-dir /var/lib/sgmim --shell /usr/sbin/nologin sgmim \
    && install -d -o sgmim -g sgmim -m 0750 /var/lib/sgmim /var/lib/sgmim/artifacts
COPY --from=builder /opt/venv /opt/venv
COPY deploy/healthcheck.py /usr/local/bin/sgmim-healthcheck
RUN chmod 0755 /usr/local/bin/sgmim-healthcheck
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    SGMIM_DATA_DIR=/var/lib/sgmim \
    SGMIM_ARTIFACT_ROOT=/var/lib/sgmim/artifacts
USER sgmim
WORKDIR /var/lib/sgmim
EXPOSE 8000
CMD ["sgmim", "serve", "--host", "0.0.0.0", "--port", "8000"]
