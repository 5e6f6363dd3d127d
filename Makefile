# The two commands a newcomer runs: `make demo` and `make test`.
# Both set up .venv from scratch when it is missing; every set-up step lives here.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.medpipe-installed
DEMO_DIR ?= demo_out

.PHONY: demo test setup system-deps lint clean bench train-ct-bundle quantize-ct-bundle train-brain-bundle

setup: $(STAMP) system-deps

# torch first, from the pinned wheels (pip finds them on local disk), then the project and its extras.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

# dcm2niix is the reference converter the ingestion tests compare against (Debian package).
system-deps:
	@command -v dcm2niix >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dcm2niix) >/dev/null; \
	  else echo "note: dcm2niix not installed and not root; tests comparing against it will be skipped"; fi; }

demo: setup
	$(BIN)/python -m medpipe.demo $(DEMO_DIR)

test: setup
	$(BIN)/python -m pytest tests -q -p no:cacheprovider

lint: setup
	$(BIN)/ruff check medpipe tests benchmarks

bench: setup
	$(BIN)/python benchmarks/ingest.py

# Re-train the shipped CT bundle from nothing (phantom dataset -> train -> held-out evaluation),
# then give it its int8 model.
train-ct-bundle: setup
	$(BIN)/python -m medpipe.training.recipe configs/train_ct_phantom.yaml -o medpipe/bundles/ct_organs_phantom --overwrite
	$(MAKE) quantize-ct-bundle

# int8 model of the shipped bundle: calibrated on 3 phantoms it was not trained on (seed 4242;
# one is held out for the accuracy gate), written to a new folder, then swapped in.
QDIR := build/quantize
quantize-ct-bundle: setup
	rm -rf $(QDIR) && mkdir -p $(QDIR)
	$(BIN)/medpipe data phantoms $(QDIR)/calibration --cases 3 --seed 4242
	$(BIN)/medpipe models quantize medpipe/bundles/ct_organs_phantom $(QDIR)/bundle \
	  $$(for f in $(QDIR)/calibration/imagesTr/*.nii.gz; do printf -- '-c %s ' "$$f"; done)
	rm -rf medpipe/bundles/ct_organs_phantom && mv $(QDIR)/bundle medpipe/bundles/ct_organs_phantom
	rm -rf $(QDIR)

# Re-train the shipped brain-tumour bundle (reversible MBConv U-Net on 4-channel BraTS-like phantoms)
# from nothing: phantom dataset -> train -> held-out evaluation (configs/train_brain_tumour.yaml).
train-brain-bundle: setup
	$(BIN)/python -m medpipe.training.recipe configs/train_brain_tumour.yaml -o medpipe/bundles/brain_tumour_phantom --overwrite

clean:
	rm -rf $(VENV) $(DEMO_DIR)
