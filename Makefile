# The two commands the README promises: `make demo` and `make test`, both on the locked versions.
# `make lock` resolves the dependencies anew (in a scratch venv) and rewrites constraints.txt.
VENV ?= .venv
PY := $(VENV)/bin/python
LOCK := constraints.txt
ARGS ?=

$(VENV)/.installed: pyproject.toml $(LOCK)
	python3 -m venv $(VENV)
	$(PY) -m pip install -q -c $(LOCK) --upgrade pip
	$(PY) -m pip install -q -c $(LOCK) -e '.[test]'
	touch $@

install: $(VENV)/.installed

demo: $(VENV)/.installed
	$(VENV)/bin/herbaria demo $(ARGS)

test: $(VENV)/.installed
	$(PY) -m pytest -q -ra $(ARGS)

lock:
	rm -rf .lock-venv && python3 -m venv .lock-venv
	.lock-venv/bin/python -m pip install -q --upgrade pip
	.lock-venv/bin/python -m pip install -q -e '.[test]'
	( echo "# The lock: exact versions \`make test\` and \`make demo\` install (pip constraints, used by the Makefile). Refresh: make lock"; \
	  .lock-venv/bin/python -m pip freeze --all --exclude-editable | grep -v '^herbaria' ) > $(LOCK)
	rm -rf .lock-venv

.PHONY: install demo test lock
