# The two commands the README gives: `make demo` and `make test`.
.PHONY: setup demo test lint

setup:
	@bash scripts/setup.sh

demo: setup
	.venv/bin/sockmesh demo

test: setup
	.venv/bin/python -m pytest -ra tests

lint: setup
	.venv/bin/ruff check xds_client translator bpf integration tests
	.venv/bin/mypy xds_client translator bpf integration
