# The two commands a person needs: `make run` and `make test`. Each installs
# what is missing (Debian packages with apt, Python packages into .venv/),
# rebuilds the engine when its sources changed, then runs.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMPS := $(VENV)/.stamps
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
ARGS ?=
PYTEST_ARGS ?=

# Debian packages: one list per purpose in packages/ (one name a line, `#`
# comments), read here and by the image build (image/stages/).
packages = $(strip $(shell sed 's/\#.*//' $(addprefix packages/,$(1))))
DEB_RUN_LISTS := packages/run.txt packages/build.txt
DEB_TEST_LISTS := packages/test.txt
DEB_RUN := $(call packages,run.txt)
DEB_BUILD := $(call packages,build.txt)
DEB_TEST := $(call packages,test.txt)
# The SD-card image: arm64 root under qemu-user, assembly, and the boot test.
DEB_IMAGE := $(call packages,image-host.txt)
IMAGE_ARGS ?=
# native/ae_limits.h is written from the model at every build (appliance/engine_limits.py)
ENGINE_SOURCES := $(wildcard native/*.c native/*.h) native/build_engine.py setup.py pyproject.toml \
	appliance/model.py appliance/engine_limits.py
# The npm WHEP players of tests/e2e/test_players.py, bundled into tests/players/dist/.
PLAYER_SOURCES := $(addprefix tests/players/,package.json package-lock.json .npmrc build.mjs) \
	$(wildcard tests/players/src/*.js)

.PHONY: run test test-slow bench sanitize native-check lint deps clean

run: $(STAMPS)/engine
	$(BIN)/appliance run $(ARGS)

test: $(STAMPS)/engine $(STAMPS)/deb-test $(STAMPS)/deb-unpacked $(STAMPS)/players lint
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# The house's habits, both clean (pyproject.toml says which rules and why).
.PHONY: lint
lint: $(STAMPS)/venv native-check
	$(BIN)/ruff check appliance tests bench native

# Image build, boot test and soak: minutes to an hour.
test-slow: $(STAMPS)/engine $(STAMPS)/deb-test $(STAMPS)/deb-unpacked $(STAMPS)/players
	$(BIN)/python -m pytest --run-slow $(PYTEST_ARGS)

# The SD-card image in image/out/ (docs/IMAGE.md), 25+ minutes. Options go
# in IMAGE_ARGS, e.g. IMAGE_ARGS="--base raspios-lite.img.xz --set VERSION=1.0".
.PHONY: image
image:
	$(call apt_ensure,$(DEB_IMAGE))
	image/build.sh $(IMAGE_ARGS)

# A signed update bundle (RAUC) of the image built last, next to it:
# image/out/*.raucb (docs/IMAGE.md). Options go in BUNDLE_ARGS, e.g.
# BUNDLE_ARGS="--cert project.crt --key project.key".
.PHONY: bundle
bundle:
	$(call apt_ensure,$(DEB_IMAGE))
	image/bundle.sh $(BUNDLE_ARGS)

# The benchmarks (about 15 minutes); their results are in BENCHMARKS.md.
bench: $(STAMPS)/engine $(STAMPS)/deb-test
	$(call apt_ensure,$(call packages,bench.txt))
	$(BIN)/python bench/engine_bench.py
	$(BIN)/python bench/whep_bench.py
	$(BIN)/python bench/browser_latency.py
	$(BIN)/python bench/lean_bench.py
	$(BIN)/python bench/post_burst.py
	$(BIN)/python bench/leave_rounds.py
	$(BIN)/python bench/lean_memory.py
	$(BIN)/python bench/join_delay.py
	$(BIN)/python bench/stream_flood.py
	$(BIN)/python bench/idle_sessions.py
	$(BIN)/python bench/network_sources.py
	$(BIN)/python bench/network_latency.py
	$(BIN)/python bench/drift_hour.py
	$(BIN)/python bench/relay_bench.py

deps: $(STAMPS)/engine $(STAMPS)/deb-test $(STAMPS)/deb-unpacked $(STAMPS)/players

# apt-get only when a package is missing, so a ready machine starts at once.
define apt_ensure
	@missing=$$(for p in $(1); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null \
		| grep -q 'install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "Installing Debian packages:" $$missing; \
		$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get update -q && \
		$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $$missing; \
	fi
endef

# Packages that cannot be installed here, unpacked for the tests instead
# (packages/test-unpacked.txt says why): into .venv/debroot.
DEB_UNPACKED = $(call packages,test-unpacked.txt)
$(STAMPS)/deb-unpacked: packages/test-unpacked.txt $(STAMPS)/deb-test
	rm -rf $(VENV)/debroot $(VENV)/debs && mkdir -p $(VENV)/debroot $(VENV)/debs
	cd $(VENV)/debs && { apt-get download -q $(DEB_UNPACKED) || \
		{ $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get update -q && \
		  apt-get download -q $(DEB_UNPACKED); }; }
	for deb in $(VENV)/debs/*.deb; do dpkg -x "$$deb" $(VENV)/debroot || exit 1; done
	rm -rf $(VENV)/debs
	@touch $@

$(STAMPS)/deb-run: Makefile $(DEB_RUN_LISTS)
	$(call apt_ensure,$(DEB_RUN) $(DEB_BUILD))
	@mkdir -p $(STAMPS) && touch $@

# Node and npm from Debian only when the machine has none of its own
# (Debian's nodejs conflicts with other builds of it).
$(STAMPS)/deb-test: Makefile $(DEB_TEST_LISTS)
	$(call apt_ensure,$(DEB_TEST) $(if $(shell command -v npm),,nodejs npm))
	@mkdir -p $(STAMPS) && touch $@

# Exact versions from the lock file; no install scripts (tests/players/.npmrc).
$(STAMPS)/players: $(STAMPS)/deb-test $(PLAYER_SOURCES)
	cd tests/players && npm ci --no-audit --no-fund && npm run build
	@mkdir -p $(STAMPS) && touch $@

# The app's own packages at the versions in packages/python.txt, the same ones
# the image installs; the test tools take what pyproject.toml allows.
$(STAMPS)/venv: $(STAMPS)/deb-run pyproject.toml packages/python.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip setuptools wheel -c packages/python.txt cffi
	$(BIN)/python -m pip install -q -c packages/python.txt -e '.[test]' --no-build-isolation
	@touch $@

$(STAMPS)/engine: $(STAMPS)/venv $(ENGINE_SOURCES)
	$(BIN)/python -m pip install -q -e . --no-build-isolation --no-deps
	@touch $@

# The C sources alone, warnings as errors.
native-check: $(STAMPS)/deb-run
	@for f in native/*.c; do \
		gcc -std=gnu11 -Wall -Wextra -Werror -fsyntax-only -Inative $$f \
			$$(pkg-config --cflags gstreamer-1.0 gstreamer-app-1.0 gstreamer-webrtc-1.0 gstreamer-sdp-1.0 nice alsa opus openssl libsrtp2 speexdsp) || exit 1; \
	done; echo "native: clean under -Wall -Wextra -Werror"

# The engine tests on an engine built with AddressSanitizer and UBSan.
sanitize: $(STAMPS)/venv $(STAMPS)/deb-test
	bash native/sanitize.sh $(BIN)/python

clean:
	rm -rf build *.egg-info appliance/_engine_cffi* $(VENV)
