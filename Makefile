# The two commands a newcomer runs: `make demo` and `make test`.
# Both set up .venv from scratch when it is missing; every set-up step lives here.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.medpipe-installed
DEMO_DIR ?= demo_out

.PHONY: demo test setup system-deps lint clean bench train-ct-bundle quantize-ct-bundle nnunet-venv nnunet-fixtures \
	bench-nnunet train-brain-bundle train-brain-voxelmorph bench-registration-deps bench-registration recon-data \
	train-recon-bundle train-recon-rim train-ct-2d-bundle quantize-ct-2d-bundle \
	train-brain-tumour-bundle demo-mri train-brain-t1-bundle bench-mri \
	engines bench-engines docker-deps docker-check \
	bench-server

setup: $(STAMP) system-deps

# torch first, from the pinned wheels (pip finds them on local disk), then the project and its extras.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(BIN)/python -m pip install -q -e '.[dev,recon-data,registration,2d,server]'
	$(BIN)/python -m pip install -q -e '.[slicer]' || echo "note: slicer-core did not install here; the headless MRML tests will be skipped"
	touch $(STAMP)

# dcm2niix is the reference converter the ingestion tests compare against (Debian package).
# orthanc + orthanc-dicomweb: the real PACS the PACS tests start on a free port (RUNLEVEL=1: the
# package's own service is not started; the tests run their own instance with a temp config).
system-deps:
	@command -v dcm2niix >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dcm2niix) >/dev/null; \
	  else echo "note: dcm2niix not installed and not root; tests comparing against it will be skipped"; fi; }
	@# MRI reconstruction: BART (CS baseline), ismrmrd-tools (ISMRMRD test files), real brains for k-space
	@# simulation (mricron-data: Colin27, INIA19; insighttoolkit5-examples: ITK T1 head, complex slice).
	@missing=""; for p in bart ismrmrd-tools mricron-data insighttoolkit5-examples; do \
	  dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing) >/dev/null; \
	  else echo "note:$$missing not installed and not root; recon tests and data sources that need them are skipped"; fi; fi
	@test -x /usr/sbin/Orthanc -a -f /usr/share/orthanc/plugins/libOrthancDicomWeb.so || { \
	  if [ "$$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then \
	    (apt-get update -qq && RUNLEVEL=1 DEBIAN_FRONTEND=noninteractive apt-get install -y -qq orthanc orthanc-dicomweb) >/dev/null; \
	  else echo "note: orthanc/orthanc-dicomweb not installed and not root; the PACS tests will be skipped"; fi; }

demo: setup
	$(BIN)/python -m medpipe.demo $(DEMO_DIR)

# The MRI job on a built-in example: simulated 8-coil brain k-space -> CIRIM -> tissue + lesion
# segmentation -> atlas lobes -> volumes, DICOM MR + SEG, one-page report (docs/mri_brain.md).
demo-mri: setup
	$(BIN)/python -m medpipe data mri-brain $(DEMO_DIR)/mri_studies --studies 1 --overwrite
	$(BIN)/python -m medpipe run mri_brain $(DEMO_DIR)/mri_studies -o $(DEMO_DIR)/mri_runs
	@echo "report: $(DEMO_DIR)/mri_runs/mri_0/artifacts/report/files.files/report.pdf (and report.png)"

test: setup engines
	$(BIN)/python -m pytest tests -q -p no:cacheprovider

lint: setup
	$(BIN)/ruff check medpipe tests benchmarks
	$(BIN)/hadolint --failure-threshold error docker/Dockerfile.cpu docker/Dockerfile.cuda

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

# The real nnU-Net (PyPI) in its own venv: the reference the interop benchmark and fixtures need.
NNUNET_VENV := .venv-nnunet
NNUNET_STAMP := $(NNUNET_VENV)/.installed-2.8.1
nnunet-venv: $(NNUNET_STAMP)
$(NNUNET_STAMP):
	test -x $(NNUNET_VENV)/bin/python || $(PY) -m venv $(NNUNET_VENV)
	$(NNUNET_VENV)/bin/python -m pip install -q --upgrade pip
	$(NNUNET_VENV)/bin/python -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(NNUNET_VENV)/bin/python -m pip install -q nnunetv2==2.8.1 torch==2.14.1 torchvision==0.29.1
	touch $(NNUNET_STAMP)

# Regenerate tests/fixtures/nnunet with nnU-Net's own planner, trainer and predictor (committed;
# the tests never run nnU-Net). See tests/fixtures/nnunet/make_fixtures.py.
NNFIX := build/nnunet_fixtures
nnunet-fixtures: setup nnunet-venv
	rm -rf $(NNFIX) && mkdir -p $(NNFIX)
	$(BIN)/medpipe data phantoms $(NNFIX)/raw --cases 6 --shape 48,40,36 --spacing 8,8,8.5 --seed 901
	PATH=$(CURDIR)/$(NNUNET_VENV)/bin:$$PATH $(NNUNET_VENV)/bin/python tests/fixtures/nnunet/make_fixtures.py \
	  $(NNFIX)/raw $(NNFIX)/out $(NNFIX)/work
	rm -rf tests/fixtures/nnunet/results tests/fixtures/nnunet/predictions tests/fixtures/nnunet/imagesTs
	cp -r $(NNFIX)/out/* tests/fixtures/nnunet/

# medpipe vs nnU-Net's own predictor on a model nnU-Net trains here (benchmarks/RESULTS.md).
# The recorded run (RESULTS.md "medpipe vs nnU-Net's predictor"), ~5 h: nnU-Net's default trainer
# first, then nnUNetTrainer_onlyMirror01 started from its weights (left/right organs need a trainer
# that does not mirror left-right) to epoch 60 on 1 thread and on to 80 on 2 threads; only the last
# step records the comparison.
NNBENCH := $(BIN)/python benchmarks/nnunet_compare.py --shape 64,56,48 --spacing 6.3,6.0,6.6 --iters 25
NNMIRROR01 := --trainer nnUNetTrainer_onlyMirror01 --init-from nnUNetTrainer
bench-nnunet: setup nnunet-venv
	OMP_NUM_THREADS=1 $(NNBENCH) --threads 1 --epochs 64 --no-record
	OMP_NUM_THREADS=1 $(NNBENCH) --threads 1 $(NNMIRROR01) --epochs 60 --no-record
	$(NNBENCH) --threads 2 $(NNMIRROR01) --epochs 80

# Re-train the shipped 2D bundle (ParaTransCNN-tiny on axial phantom slices, Synapse labels) from nothing.
train-ct-2d-bundle: setup
	$(BIN)/python -m medpipe.training.recipe configs/train_ct_phantom_2d.yaml -o medpipe/bundles/ct_organs_2d_phantom --overwrite

# int8 model of the 2D bundle (the 2D graph, calibrated on single slices of 3 unseen phantoms). Measured:
# it misses the accuracy gate (worst structure Dice vs fp32 0.935 < 0.95 with 300 patches), so the shipped
# 2D bundle has none and runs OpenVINO fp32; the target refuses cleanly and writes nothing when the gate fails.
quantize-ct-2d-bundle: setup
	rm -rf $(QDIR)2d && mkdir -p $(QDIR)2d
	$(BIN)/medpipe data phantoms $(QDIR)2d/calibration --cases 3 --seed 4242
	$(BIN)/medpipe models quantize medpipe/bundles/ct_organs_2d_phantom $(QDIR)2d/bundle --max-patches 300 \
	  $$(for f in $(QDIR)2d/calibration/imagesTr/*.nii.gz; do printf -- '-c %s ' "$$f"; done)
	rm -rf medpipe/bundles/ct_organs_2d_phantom && mv $(QDIR)2d/bundle medpipe/bundles/ct_organs_2d_phantom
	rm -rf $(QDIR)2d

# Re-train the shipped brain-tumour bundle (reversible MBConv U-Net on 4-channel BraTS-like phantoms)
# from nothing: phantom dataset -> train -> held-out evaluation (configs/train_brain_tumour.yaml).
train-brain-tumour-bundle: setup
	$(BIN)/python -m medpipe.training.recipe configs/train_brain_tumour.yaml -o medpipe/bundles/brain_tumour_phantom --overwrite

# Re-train the MRI job's segmentation bundle (GM / WM / lesion on T1) from the offline brains.
train-brain-t1-bundle: setup
	$(BIN)/python -m medpipe.training.recipe configs/train_brain_t1.yaml -o medpipe/bundles/brain_t1_lesion --overwrite

# The MRI job end to end vs the reference tools (CS/BART, demons, ANTs SyN): benchmarks/RESULTS.md
bench-mri: setup bench-registration-deps
	$(BIN)/python benchmarks/mri_brain.py

clean:
	rm -rf $(VENV) $(DEMO_DIR)

# Re-train the shipped brain registration bundle from nothing (MNI152 2009a from nilearn's wheel,
# random diffeomorphic warps, MICDIR; at most 50 minutes of training, 1 torch thread).
train-brain-bundle: setup
	$(BIN)/python -m pip install -q -e '.[registration]'
	OMP_NUM_THREADS=1 $(BIN)/python -m medpipe.registration.recipe configs/train_brain_micdir.yaml -o medpipe/bundles/brain_micdir --overwrite

# The VoxelMorph-style baseline of the registration benchmark, trained the same way (not shipped).
train-brain-voxelmorph: setup
	$(BIN)/python -m pip install -q -e '.[registration]'
	OMP_NUM_THREADS=1 $(BIN)/python -m medpipe.registration.recipe configs/train_brain_voxelmorph.yaml -o build/bundles/brain_voxelmorph --overwrite

# antspyx pins numpy < 2.4 / scipy < 1.16, so ANTs SyN gets its own environment (build/ants-venv).
bench-registration-deps: setup system-deps
	$(BIN)/python -m pip install -q -e '.[registration]'
	test -x build/ants-venv/bin/python || $(PY) -m venv build/ants-venv
	build/ants-venv/bin/python -m pip install -q antspyx nibabel

bench-registration: bench-registration-deps
	test -d build/bundles/brain_voxelmorph || $(MAKE) train-brain-voxelmorph
	OMP_NUM_THREADS=1 $(BIN)/python benchmarks/registration.py --threads 1
	OMP_NUM_THREADS=1 $(BIN)/python benchmarks/registration_io.py --threads 1
	OMP_NUM_THREADS=1 $(BIN)/python benchmarks/registration_int8.py --threads 1

# Re-train the shipped CIRIM reconstruction bundle from nothing: simulate k-space from the brain
# sources (train: MNI152, INIA19, phantoms, ITK complex slice; validation: ITK T1 head; held-out
# test: Colin27), train (time-boxed to 45 min), evaluate the held-out brain at 4x and 8x.
KDIR := build/kspace
recon-data: setup
	$(BIN)/python -m medpipe data kspace $(KDIR)/train --source mni152 --slices 90 --planes axial,coronal,sagittal --augment --snr 20,60 --seed 1 --overwrite
	$(BIN)/python -m medpipe data kspace $(KDIR)/train --source inia19 --slices 60 --planes axial,coronal,sagittal --augment --snr 20,60 --seed 2 --overwrite
	for s in 3 4 5; do $(BIN)/python -m medpipe data kspace $(KDIR)/train --source phantom --slices 16 --augment --snr 20,60 --seed $$s --overwrite; done
	$(BIN)/python -m medpipe data kspace $(KDIR)/train --source itk_complex --slices 1 --copies 16 --augment --snr 20,60 --seed 6 --overwrite
	$(BIN)/python -m medpipe data kspace $(KDIR)/val --source itk_t1 --slices 12 --snr 40 --seed 8 --overwrite
	$(BIN)/python -m medpipe data kspace $(KDIR)/test --source colin27 --slices 24 --snr 40 --seed 7 --overwrite

# TRAIN_RECON_ARGS overrides the config from the command line, e.g. TRAIN_RECON_ARGS='--threads 1'
# while another job holds the other core.
train-recon-bundle: recon-data
	$(BIN)/python -m medpipe train-recon $(KDIR)/train --val $(KDIR)/val --test $(KDIR)/test \
	  --config configs/train_recon_brain.yaml -o medpipe/bundles/mri_brain_cirim --work-dir build/recon-train --overwrite \
	  $(TRAIN_RECON_ARGS)

# The RIM baseline of benchmarks/recon.py (not shipped): the CIRIM recipe and time box with the
# published RIM layout (one cascade of 8 ConvGRU steps) at the bundle's width.
train-recon-rim: recon-data
	$(BIN)/python -m medpipe train-recon $(KDIR)/train --val $(KDIR)/val --test $(KDIR)/test \
	  --config configs/train_recon_brain.yaml --model rim --cascades 1 --steps 8 --name rim_brain \
	  -o build/bundles/rim_brain --work-dir build/rim-train --overwrite $(TRAIN_RECON_ARGS)

# Workflow engines, each in its own venv (their pins clash with the project's; they call medpipe's
# CLI, so they need no torch). The packages are the pyproject extras `snakemake` and `airflow`.
EXTRA = $$($(PY) -c "import tomllib; print(' '.join(repr(r) for r in tomllib.load(open('pyproject.toml', 'rb'))['project']['optional-dependencies']['$(1)']))")
engines: .venv-snakemake/.installed .venv-airflow/.installed
.venv-snakemake/.installed: pyproject.toml
	test -x .venv-snakemake/bin/python || $(PY) -m venv .venv-snakemake
	eval .venv-snakemake/bin/python -m pip install -q $(call EXTRA,snakemake)
	touch $@
.venv-airflow/.installed: pyproject.toml
	test -x .venv-airflow/bin/python || $(PY) -m venv .venv-airflow
	eval .venv-airflow/bin/python -m pip install -q $(call EXTRA,airflow)
	touch $@

# ct_organs under medpipe run, Snakemake and Airflow: identical artifacts, time per study (RESULTS.md).
bench-engines: setup engines
	$(BIN)/python benchmarks/engines.py

# Debian's Docker daemon and debootstrap: only docker-check needs them.
docker-deps:
	@command -v dockerd >/dev/null 2>&1 && command -v debootstrap >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker.io debootstrap) >/dev/null; \
	  else echo "docker-check needs root and Debian's docker.io and debootstrap"; exit 1; fi; }

# Build the CPU image with its own dockerd (debootstrap base, host-downloaded wheels), run ct_organs
# in it on the example study and compare with the host (minutes: run when docker/ or the
# dependencies change; figures in RESULTS.md).
docker-check: setup docker-deps
	$(BIN)/python benchmarks/docker_image.py

# 10 concurrent jobs through medpipe serve vs medpipe run on the same phantom studies (benchmarks/RESULTS.md).
bench-server: setup
	OMP_NUM_THREADS=1 $(BIN)/python benchmarks/server.py
