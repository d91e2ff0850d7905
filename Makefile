# Two commands a new user needs (README):  make demo   and   make test
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin

$(BIN)/hsa: pyproject.toml constraints.txt
	@# torch 2.14.1 is a CUDA build: the venv takes ~6.5 GiB. Say so before pip fails with ENOSPC.
	@df -Pk . | awk 'NR==2 && $$4 < 7*1024*1024 {printf "install: warning: %.1f GiB free here; the venv needs ~6.5 GiB\n", $$4/1048576 > "/dev/stderr"}'
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q --no-cache-dir -c constraints.txt -e '.[test]'
	@# openpi's own client, for the tests of `hsa serve` and `hsa rollout --server`: without its
	@# dependencies, as its numpy<2 pin (metadata only) would downgrade numpy; it needs only
	@# websockets and msgpack, installed above
	$(BIN)/pip install -q --no-cache-dir --no-deps -c constraints.txt openpi-client
	touch $(BIN)/hsa

.PHONY: install demo test bench docs
install: $(BIN)/hsa

demo: install  ## the whole demo pipeline: synth -> prepare -> geometry -> features -> train -> evaluate
	$(BIN)/dvc config core.analytics false
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/dvc repro

test: install  ## lint the code (ruff, with bugbear) and the Dockerfile, then every test (real dvc runs included)
	$(BIN)/ruff check .
	$(BIN)/hadolint Dockerfile
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/python -m pytest -q

docs: install
	$(BIN)/hsa params-doc --out docs/params.md
