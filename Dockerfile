# syntax=docker/dockerfile:1
# The one image every node runs: the Ray head and workers (cluster launcher and KubeRay), job
# drivers (`python -m train fit`) and Serve replicas (`serve.app:app`, `trading.keeper:app`).
# Two variants from this file, same Python (3.11), Ray (2.60.0) and project code, so a CPU head
# and CUDA workers form one cluster:
#
#   docker build -t registry.example.com/hybrid-trader:0.1.0 .                                 # CPU
#   docker build --build-arg VARIANT=cuda -t registry.example.com/hybrid-trader:0.1.0-cuda .   # GPU
#
# BuildKit (the default builder since Docker 23) pulls only the base image that VARIANT names.
# cluster/ray-cluster.yaml and cluster/kuberay/*.yaml name these two tags.

ARG RAY_VERSION=2.60.0
ARG VARIANT=cpu

FROM rayproject/ray:${RAY_VERSION}-py311 AS base-cpu
FROM rayproject/ray:${RAY_VERSION}-py311-gpu AS base-cuda

# hadolint ignore=DL3006
FROM base-${VARIANT}
ARG VARIANT
ARG TORCH_VERSION=2.13.0
# Empty: the CPU wheel from PyTorch's CPU index (PyPI's Linux wheel is the CUDA build, gigabytes
# larger) for VARIANT=cpu, PyPI's CUDA wheel for VARIANT=cuda. Set it to pick another index.
ARG TORCH_INDEX_URL=""

# LightGBM's wheel links libgomp at run time. /app holds the project and /data/ledger the trading
# ledger's mount point; /data/registry and ~/ray_results (Ray Train's default storage) are where
# docker-compose.yml mounts the volumes every node shares. All belong to Ray's user `ray` (uid 1000,
# gid 100 in Ray's images), so the editable install, numba's cache, SQLite and a fresh named volume
# (Docker copies the mount point's owner into it) are writable. Numeric ids keep runAsNonRoot
# checkable.
USER 0
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends libgomp1 \
    && rm -rf /var/lib/apt/lists/* \
    && mkdir -p /app /data/ledger /data/registry /home/ray/ray_results \
    && chown 1000:100 /app /data/ledger /data/registry /home/ray/ray_results
USER 1000:100
WORKDIR /app
SHELL ["/bin/bash", "-o", "pipefail", "-c"]

# torch first, so that the project's `torch==2.13.0` is already met when its dependencies install
# (a local version such as 2.13.0+cpu satisfies ==2.13.0).
# hadolint ignore=DL3013
RUN case "${VARIANT}" in \
        cpu) index=(--index-url "${TORCH_INDEX_URL:-https://download.pytorch.org/whl/cpu}") ;; \
        cuda) index=(${TORCH_INDEX_URL:+--index-url "${TORCH_INDEX_URL}"}) ;; \
        *) echo "VARIANT must be cpu or cuda, not ${VARIANT}" >&2; exit 1 ;; \
    esac \
    && pip install --no-cache-dir "${index[@]}" "torch==${TORCH_VERSION}"

# The project's dependencies in their own layer (read from pyproject.toml), so a code change does
# not reinstall them. Ray 2.60.0 is already in the base image; its extras come from here.
COPY --chown=1000:100 pyproject.toml README.md /app/
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
        > /tmp/requirements.txt \
    && pip install --no-cache-dir -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt

# Editable on purpose: configs/ is found relative to the project root (features.config.PROJECT_ROOT),
# so the packages must stay beside configs/ instead of moving into site-packages.
COPY --chown=1000:100 configs /app/configs
COPY --chown=1000:100 features /app/features
COPY --chown=1000:100 train /app/train
COPY --chown=1000:100 serve /app/serve
COPY --chown=1000:100 trading /app/trading
COPY --chown=1000:100 cluster /app/cluster
RUN pip install --no-cache-dir --no-deps -e /app \
    && python -c "import ray, torch, features, train, serve.app, trading, cluster; \
assert ray.__version__ == '2.60.0', ray.__version__; print('torch', torch.__version__)"

ENV PYTHONUNBUFFERED=1
