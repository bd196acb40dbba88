# make run    — set up .venv and run the whole notebook series (PRESET=workshop by default;
#               it replaces its own earlier executed notebooks, never a file it did not write;
#               EXPERIMENT=name puts everything under runs/<preset>/name/; with it,
#               SET=field=value,... overrides Config fields in every notebook)
# make readme — copy the measured results and time tables from runs/ into README.md
# make test   — set up .venv and run unit tests + every notebook under the smoke preset, each
#               notebook top to bottom and then every code cell again (tests/test_notebooks_rerun.py)
# make lab   — JupyterLab (localhost only) with the same environment
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

# Offline copies of hub models and data (CI, workshop machines): shared/assets beside the repository
ifneq ($(wildcard ../shared/assets),)
export HUMANIZER_ASSETS ?= $(abspath ../shared/assets)
endif
export TOKENIZERS_PARALLELISM := false

.PHONY: setup run readme test lab serve bench clean blas
# The kernel's stamp names its environment, so installing OpenBLAS later re-registers the kernel.
KERNEL_STAMP := $(VENV)/.kernel-$(if $(LD_PRELOAD),openblas,plain)-$(if $(HUMANIZER_ASSETS),assets,hub)
setup: $(VENV)/.installed $(KERNEL_STAMP) blas

$(VENV)/.installed: requirements.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-deps -e .
	touch $@

$(KERNEL_STAMP): $(VENV)/.installed
	$(PY) -m ipykernel install --sys-prefix --name humanizer --display-name "Python (humanizer)" \
	  $(if $(LD_PRELOAD),--env LD_PRELOAD $(LD_PRELOAD)) \
	  $(if $(HUMANIZER_ASSETS),--env HUMANIZER_ASSETS $(HUMANIZER_ASSETS))
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
	$(PY) -m helpers.series --overwrite --preset $(PRESET) $(if $(EXPERIMENT),--experiment $(EXPERIMENT)) $(if $(SET),--set $(SET))

readme: setup
	$(PY) -m helpers.report --preset workshop

test: setup
	HUMANIZER_PRESET=smoke $(PY) -m pytest tests -p no:cacheprovider

lab: setup
	$(VENV)/bin/jupyter lab --ip 127.0.0.1 --notebook-dir .

serve: setup   # the humanizer over HTTP on 127.0.0.1:8080 (PORT=..., ADAPTER=...)
	$(PY) -m helpers.serve --preset $(PRESET) --port $(or $(PORT),8080) $(if $(ADAPTER),--adapter $(ADAPTER))

bench: setup
	$(PY) bench/quant.py
	$(PY) bench/inference.py
	$(PY) bench/fast_cpu.py
	$(PY) bench/train_step.py
	$(PY) bench/runtimes.py

clean:
	rm -rf runs/$(PRESET)
