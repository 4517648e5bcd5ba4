# The two commands of the README's quick start are `make run` and `make test`; each installs
# what it needs (a virtualenv in .venv, the control-plane binaries in .envtest/bin).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
LOCAL := .local
ENSURE_ASSETS := hack/controlplane/ensure.sh
ENSURE_NODE := hack/node/ensure.sh
ENSURE_KMS_TOOLS := hack/tools/ensure.sh
IMAGE_ARCHIVE := .envtest/image/kms-operator.tar

.PHONY: run test lint unit integration e2e controlplane tools image node cluster bench proto clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

# Builds kube-apiserver, etcd, kubectl, helm and etcdctl once (only a missing etcdctl when
# KUBEBUILDER_ASSETS is set).
controlplane:
	$(ENSURE_ASSETS) >/dev/null

# Builds the AWS client-side tools of the tests and the benchmark once (sops, local-kms) into
# .envtest/tools/bin; boto3, the AWS CLI, the AWS Encryption SDK and moto come with .venv.
tools:
	$(ENSURE_KMS_TOOLS) >/dev/null

# The container image (Dockerfile) as kms-operator:dev, also saved to .envtest/image/ for the
# local node. Here: a Debian base made with debootstrap and wheels built on the host, no network
# in the build; elsewhere `make image BASE_IMAGE=python:3.11-slim`.
image:
	hack/image/build.sh

# Runs the operator and its API: against the cluster of KUBECONFIG (or ~/.kube/config) when one
# is configured, otherwise on a local control plane started for the session.
run: $(STAMP)
	@if [ -z "$${KUBECONFIG:-}" ] && [ ! -f "$$HOME/.kube/config" ]; then \
	  export KUBEBUILDER_ASSETS="$$($(ENSURE_ASSETS) | tail -n 1)"; \
	fi; \
	mkdir -p $(LOCAL); \
	exec $(BIN)/kms-operator run --cluster auto --local-dir $(LOCAL) \
	  --store-path $(LOCAL)/store.db --root-key-file $(LOCAL)/root.key \
	  --tls-dir $(LOCAL)/tls --audit-log $(LOCAL)/audit.log \
	  --api-host 127.0.0.1 --operator-namespace kms-system $(ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports

unit: $(STAMP)
	$(BIN)/pytest -m unit

integration: $(STAMP)
	export KUBEBUILDER_ASSETS="$$($(ENSURE_ASSETS) | tail -n 1)" && \
	  export KMS_TOOLS_BIN="$$($(ENSURE_KMS_TOOLS) | tail -n 1)" && $(BIN)/pytest -m integration

# The whole suite on a fresh machine: lint, types, layers, unit and integration tests, then the
# e2e tier on a real node (root; `make unit`, `make integration`, `make e2e` run one tier).
test: lint
	export KUBEBUILDER_ASSETS="$$($(ENSURE_ASSETS) | tail -n 1)" && \
	  export KMS_TOOLS_BIN="$$($(ENSURE_KMS_TOOLS) | tail -n 1)" && \
	  $(BIN)/pytest -m "unit or integration"
	$(MAKE) e2e

# The e2e tier (tests/e2e): a dev cluster on this machine (root; control plane, node binaries
# and image built first, cached), or with KMS_E2E_USE_KUBECONFIG=1 the cluster of KUBECONFIG
# (kind or any, holding the image KMS_E2E_IMAGE).
e2e: $(STAMP)
	export KUBEBUILDER_ASSETS="$$($(ENSURE_ASSETS) | tail -n 1)" && \
	if [ "$${KMS_E2E_USE_KUBECONFIG:-}" != 1 ]; then \
	  export KMS_NODE_ASSETS="$$($(ENSURE_NODE) | tail -n 1)" && hack/image/build.sh >/dev/null; \
	fi && \
	$(BIN)/pytest -m e2e tests/e2e $(ARGS)

# Builds the node's binaries once (kubelet, kube-proxy, controller-manager, scheduler,
# containerd, CNI plugins, CoreDNS, pause) into .envtest/node/bin.
node:
	$(ENSURE_NODE) >/dev/null

# A one-node cluster on this machine for people (root): prints its kubeconfig, Ctrl-C stops it
# and everything it started. The image is built when .envtest/image has none (`make image`
# rebuilds it).
cluster: $(STAMP)
	@export KUBEBUILDER_ASSETS="$$($(ENSURE_ASSETS) | tail -n 1)" && \
	export KMS_NODE_ASSETS="$$($(ENSURE_NODE) | tail -n 1)" && \
	{ [ -f $(IMAGE_ARCHIVE) ] || hack/image/build.sh >/dev/null; } && \
	exec $(BIN)/python -m kms_operator.devcluster --image $(IMAGE_ARCHIVE) $(ARGS)

bench: $(STAMP)
	export KMS_TOOLS_BIN="$$($(ENSURE_KMS_TOOLS) | tail -n 1)" && \
	  $(BIN)/python bench/bench_service.py && \
	  $(BIN)/python bench/bench_api.py

# Regenerates the KMS v2 plugin's Python modules from its .proto (committed; a unit test
# regenerates them into a temporary directory and compares).
proto: $(STAMP)
	hack/proto/generate.sh

clean:
	rm -rf $(VENV) $(LOCAL) .mypy_cache .ruff_cache .pytest_cache
