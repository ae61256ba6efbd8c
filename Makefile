# ltbench — the two commands of the README are `make bench` and `make test`; each installs first.
PYTHON  ?= python3
VENV    ?= .venv
BIN      = $(VENV)/bin
DATASET ?= digits-lt
OUT     ?= reports/$(DATASET)$(if $(RATIO),-ratio$(RATIO))
# The embedded default trains two CPU runs at once, one core each (docs/scaling.md): about 1.3x the
# one-by-one bench on 2 cores. Other datasets train one run at a time unless JOBS=N is given.
JOBS    ?= $(if $(filter digits-lt,$(DATASET)),2)
EXTRAS  ?= dev# what `make install` adds: dev,slurm also installs submitit (--launcher slurm; the CI does)

# Optional overrides forwarded to `ltbench bench` only when set.
BENCH_ARGS = $(if $(DATA_ROOT),--data-root '$(DATA_ROOT)') \
             $(if $(EPOCHS),--epochs $(EPOCHS)) \
             $(if $(SEEDS),--seeds '$(SEEDS)') \
             $(if $(METHODS),--methods '$(METHODS)') \
             $(if $(BACKBONE),--backbone '$(BACKBONE)') \
             $(if $(PRETRAINED),--pretrained '$(PRETRAINED)') \
             $(if $(IMAGE_SIZE),--image-size '$(IMAGE_SIZE)') \
             $(if $(BATCH_SIZE),--batch-size '$(BATCH_SIZE)') \
             $(if $(LR),--lr '$(LR)') \
             $(if $(SELECT_METRIC),--select-metric '$(SELECT_METRIC)') \
             $(if $(DEVICE),--device $(DEVICE)) \
             $(if $(JOBS),--jobs '$(JOBS)') \
             $(if $(RATIO),--ratio '$(RATIO)') \
             $(foreach s,$(SET),--set '$(s)')

.PHONY: install bench test clean

install: $(BIN)/.installed

$(BIN)/.installed: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[$(EXTRAS)]'
	@touch $@

bench: install
	$(BIN)/ltbench bench --benchmark benchmarks/$(DATASET).yaml --out '$(OUT)' $(BENCH_ARGS)

test: install
	$(BIN)/python -m pytest $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
