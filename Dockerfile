# The kms-operator image: `kms-operator` as entrypoint, `kmsctl` and `python3` on PATH.
#
#   make image                                   # hack/image/build.sh: wheels and base made here
#   docker build -t kms-operator .               # anywhere with a network: python:3.11-slim
#
# Two stages over one base (BASE_IMAGE, python3 on PATH in both): the builder turns the project
# and its dependencies into wheels and installs them into a virtualenv at /opt/kms-operator; the
# runtime stage copies that virtualenv only (no pip, no compiler, no build files).
#
# Wheels: hack/image/wheels/ is copied into the builder. When it holds wheels (hack/image/build.sh
# makes them on the host with `pip wheel` for machines whose containers reach no package index),
# they are installed with --no-index and the build needs no network. When it is empty (a plain
# `docker build`, CI), the builder runs `pip wheel` against the index itself.
#
# The runtime runs as the numeric user 65532:65532 (the chart's runAsUser/runAsGroup) and writes
# nothing outside its volumes: no .pyc at run time (compiled at build time), HOME and the
# temporary directory on /tmp (an emptyDir in the chart), so readOnlyRootFilesystem works.
ARG BASE_IMAGE=python:3.11-slim

FROM ${BASE_IMAGE} AS builder
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python3 -m venv /opt/kms-operator
COPY hack/image/wheels/ /wheels/
COPY pyproject.toml README.md /src/
COPY src/ /src/src/
RUN set -eu; \
    if ls /wheels/*.whl >/dev/null 2>&1; then \
      echo "installing from the wheels given in hack/image/wheels (no index)"; \
    else \
      /opt/kms-operator/bin/pip wheel --wheel-dir /wheels /src; \
    fi; \
    /opt/kms-operator/bin/pip install --no-index --find-links /wheels --no-compile kms-operator; \
    /opt/kms-operator/bin/pip uninstall --yes pip setuptools wheel >/dev/null 2>&1 || true; \
    rm -f /opt/kms-operator/bin/[aA]ctivate* /opt/kms-operator/bin/pip*; \
    site=$(/opt/kms-operator/bin/python3 -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])'); \
    find /opt/kms-operator -depth -type d -name __pycache__ -exec rm -rf {} +; \
    find "$site" -depth -type d \( -name tests -o -name test \) -prune -exec rm -rf {} +; \
    # Size (goal <= 200 MB): the kubernetes client ships an asyncio copy of itself that nothing
    # here imports (68 MB), and its generated api/ and models/ (32 MB of source, mostly
    # docstrings) are kept as compiled code only: a traceback through them shows file and line
    # but not the source text. Everything else keeps its source.
    rm -rf "$site/kubernetes/aio"; \
    /opt/kms-operator/bin/python3 -m compileall -q -j 0 -b \
      "$site/kubernetes/client/api" "$site/kubernetes/client/models"; \
    find "$site/kubernetes/client/api" "$site/kubernetes/client/models" -name '*.py' -delete; \
    /opt/kms-operator/bin/python3 -m compileall -q -j 0 /opt/kms-operator/lib; \
    /opt/kms-operator/bin/kms-operator --help >/dev/null; \
    /opt/kms-operator/bin/kmsctl --help >/dev/null

FROM ${BASE_IMAGE}
ARG VERSION=0.1.0
ARG REVISION=unknown
ARG CREATED=unknown
LABEL org.opencontainers.image.title="kms-operator" \
      org.opencontainers.image.description="A Key Management Service inside Kubernetes: keys as custom resources, envelope encryption, a Kopf operator and an in-cluster encrypt/decrypt API." \
      org.opencontainers.image.source="https://github.com/kms-operator/kms-operator" \
      org.opencontainers.image.url="https://github.com/kms-operator/kms-operator" \
      org.opencontainers.image.documentation="https://github.com/kms-operator/kms-operator#readme" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.vendor="kms-operator" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}"
COPY --from=builder /opt/kms-operator /opt/kms-operator
# A name for the numeric user: Kopf's peering identity asks getpass.getuser(), which reads
# USER/LOGNAME first (so any runAsUser works) and the password database for 65532.
RUN echo 'kms-operator:x:65532:65532:kms-operator:/tmp:/usr/sbin/nologin' >> /etc/passwd \
 && echo 'kms-operator:x:65532:' >> /etc/group
ENV PATH=/opt/kms-operator/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp \
    USER=kms-operator \
    LOGNAME=kms-operator \
    TMPDIR=/tmp
WORKDIR /tmp
USER 65532:65532
ENTRYPOINT ["kms-operator"]
CMD ["--help"]
