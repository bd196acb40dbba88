# make run    — set up .venv and run the whole notebook series (PRESET=workshop by default;
#               it replaces its own earlier executed notebooks, never a file it did not write;
#               EXPERIMENT=name puts everything under runs/<preset>/name/; with it,
#               SET=field=value,... overrides Config fields in every notebook)
# make html   — the executed series as HTML pages to read without running: runs/<preset>/html/
#               (a page per notebook, plots embedded, and index.html; replaces only its own pages)
# make readme — copy the measured results and time tables from runs/ into README.md
# make test   — set up .venv, then under the smoke preset: the unit tests, and every notebook in
#               series order top to bottom as Run All does, then every code cell again with the
#               exercises' answers pasted in (tests/test_notebooks_rerun.py)
# make lab    — JupyterLab (localhost only); the notebooks open in the "Python (humanizer)" kernel
# make assets DEST=folder — an offline pack of the models and data (README, "Offline classroom")
# make kit DEST=kit.tar.gz — a catch-up kit: runs/<preset>/ in one file to hand out (UPTO=NN)
# make unkit KIT=kit.tar.gz — unpack it into runs/<preset>/ and start any notebook there
PRESET ?= workshop
VENV   ?= .venv
PY     := $(VENV)/bin/python
PYTHON ?= python3.11

# Linux: MLX's wheel bundles the slow reference BLAS; preload OpenBLAS (15-30x faster matmuls).
OPENBLAS := /usr/lib/$(shell uname -m)-linux-gnu/openblas-pthread/libblas.so.3
ifeq ($(shell uname -s),Linux)
ifneq ($(wildcard $(OPENBLAS)),)
export LD_PRELOAD := $(OPENBLAS)
endif
endif

# Offline copies of hub models (this project's CI, or an offline pack made by `make assets`)
ifneq ($(wildcard ../shared/assets),)
export HUMANIZER_ASSETS ?= $(abspath ../shared/assets)
endif
export TOKENIZERS_PARALLELISM := false

.PHONY: setup run html readme test lab serve bench clean blas assets kit unkit
# The kernel's stamp names its environment, so installing OpenBLAS later re-registers the kernel.
KERNEL_STAMP := $(VENV)/.kernel-$(if $(LD_PRELOAD),openblas,plain)
setup: $(VENV)/.installed $(KERNEL_STAMP) blas

$(VENV)/.installed: requirements.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-deps -e .
	touch $@

$(KERNEL_STAMP): $(VENV)/.installed
	$(PY) -m ipykernel install --sys-prefix --name humanizer --display-name "Python (humanizer)" \
	  $(if $(LD_PRELOAD),--env LD_PRELOAD $(LD_PRELOAD))
	rm -f $(VENV)/.kernel-*
	touch $@

blas:
ifeq ($(shell uname -s),Linux)
	@if [ ! -e $(OPENBLAS) ]; then \
	  echo "OpenBLAS is missing: MLX will be very slow on this CPU."; \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update -qq && apt-get install -y -qq libopenblas0-pthread && \
	    echo "Installed libopenblas0-pthread: run make again to use it."; \
	  else echo "Fix: sudo apt-get install -y libopenblas0-pthread, then run make again."; fi; \
	fi
endif

run: setup
	$(PY) -m helpers.tools.series --overwrite --preset $(PRESET) $(if $(EXPERIMENT),--experiment $(EXPERIMENT)) $(if $(SET),--set $(SET))

html: setup   # UPTO=NN renders notebooks 00..NN only (a run that stopped early)
	$(PY) -m helpers.tools.render_html --overwrite --preset $(PRESET) $(if $(EXPERIMENT),--experiment $(EXPERIMENT)) $(if $(UPTO),--upto $(UPTO))

readme: setup
	$(PY) -m helpers.tools.update_docs --preset workshop
	$(PY) -m helpers.tools.notebook_times

test: setup
	HUMANIZER_PRESET=smoke $(PY) -m pytest tests -p no:cacheprovider

assets: setup   # on a connected machine: DEST=folder (PRESET=... to pack one preset only)
	@test -n "$(DEST)" || { echo "usage: make assets DEST=/path/to/folder"; exit 2; }
	$(PY) -m helpers.tools.assets --dest "$(DEST)" $(if $(filter command line,$(origin PRESET)),--preset $(PRESET))

kit: setup   # the instructor: DEST=file.tar.gz or a folder (PRESET=..., UPTO=NN, OVERWRITE=1)
	@test -n "$(DEST)" || { echo "usage: make kit DEST=/path/to/kit.tar.gz [PRESET=workshop] [UPTO=07]"; exit 2; }
	$(PY) -m helpers.tools.kit pack --preset $(PRESET) --dest "$(DEST)" $(if $(UPTO),--upto $(UPTO)) $(if $(OVERWRITE),--overwrite)

unkit: setup   # the learner: KIT=file.tar.gz (OVERWRITE=1 replaces only an earlier unpack's files)
	@test -n "$(KIT)" || { echo "usage: make unkit KIT=/path/to/kit.tar.gz"; exit 2; }
	$(PY) -m helpers.tools.kit unpack "$(KIT)" $(if $(OVERWRITE),--overwrite)

lab: setup
	$(VENV)/bin/jupyter lab --ip 127.0.0.1 --notebook-dir .

serve: setup   # the humanizer over HTTP on 127.0.0.1:8080 (PORT=..., ADAPTER=...)
	$(PY) -m helpers.tools.serve --preset $(PRESET) --port $(or $(PORT),8080) $(if $(ADAPTER),--adapter $(ADAPTER))

bench: setup
	$(PY) bench/quant.py
	$(PY) bench/inference.py
	$(PY) bench/fast_cpu.py
	$(PY) bench/train_step.py
	$(PY) bench/runtimes.py
	$(PY) bench/torch_threads.py
	$(PY) bench/dry_penalty.py

clean:
	rm -rf runs/$(PRESET)
