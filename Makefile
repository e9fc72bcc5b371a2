# The two commands README.md starts with. Each installs what is missing first.
.PHONY: setup k8s-tools up test bench mutation chart lint-imports

setup:
	@bash scripts/setup.sh

# The Kubernetes end-to-end tests need a control plane and KEDA built from Go modules (cached in ~/.cache/kapa).
k8s-tools:
	@if command -v go >/dev/null; then bash scripts/build-k8s.sh >/dev/null && bash scripts/build-keda.sh >/dev/null; \
	else echo "make: no Go toolchain: the Kubernetes end-to-end tests (tests/k8s) will skip; install Go to run them"; fi

up: setup
	.venv/bin/kapa up

test: setup k8s-tools
	.venv/bin/pytest

bench: setup
	.venv/bin/python -m benchmarks.proxy

# Mutation testing (mutmut) of the decision, the config parser, the limiter, the request accounting, the
# throttler and the load-balancing policies, each against its unit tests (tests/mutation.py): the whole set
# is run by hand, about seven minutes with one worker on 2 cores; CI runs a fixed sample of it in under two
# minutes (tests/test_mutation_sample.py). Mutants no test kills are listed in docs/mutation.md, with why.
mutation: setup
	.venv/bin/python -m tests.mutation

# The chart's generated files (Envoy bootstrap, scrape jobs, alert rules, dashboard) from Kapa's code; a
# developer command over this checkout (tests/charts fails when they are stale).
chart: setup
	.venv/bin/python -m kapa.tools.chartgen --repo .
