# The two commands the README promises: `make demo` and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
ARGS ?=

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $@

install: $(VENV)/.installed

demo: $(VENV)/.installed
	$(VENV)/bin/herbaria demo $(ARGS)

test: $(VENV)/.installed
	$(PY) -m pytest -q -ra $(ARGS)

.PHONY: install demo test
