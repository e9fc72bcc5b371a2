# The two commands README.md starts with. Each installs what is missing first.
.PHONY: setup up test bench

setup:
	@bash scripts/setup.sh

up: setup
	.venv/bin/kapa up

test: setup
	.venv/bin/pytest

bench: setup
	.venv/bin/python -m benchmarks.proxy
