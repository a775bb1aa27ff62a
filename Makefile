# longpoll-gateway — `make run` to try it, `make test` to check everything.

CARGO ?= cargo
# The tests that restart RabbitMQ run alone, after the rest.
ISOLATED := binary(/^(broker_restart|cluster)$$/)

.PHONY: run test lint fmt-check clippy deny unit deps rust-tests doc-tests restart-tests \
        chart-test observability-test browser-test cluster-test load bench bench-compare image clean help

help:
	@echo "make run    - the gateway on the embedded broker, with the management API and /demo"
	@echo "make test   - every test (starts RabbitMQ, installs what the tests need)"
	@echo "make cluster-test - 3 replicas behind nginx, failover scenarios at full size"
	@echo "make load   - a load run with lp-load on both brokers"
	@echo "make bench  - criterion benchmarks"
	@echo "make bench-compare - the gateway vs nchan and raw AMQP, same scenario, one run, ratios"
	@echo "make image  - the container image (needs a Docker engine)"

run:
	@token="dev-$$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')"; \
	echo ""; \
	echo "  longpoll-gateway on the embedded broker"; \
	echo "  management API token: $$token"; \
	echo "  demo page:            http://127.0.0.1:8080/demo?token=$$token"; \
	echo "  metrics:              http://127.0.0.1:9090/metrics"; \
	echo ""; \
	exec $(CARGO) run --release --bin longpoll-gateway -- serve \
	    --listen 127.0.0.1:8080 --admin-listen 127.0.0.1:9090 --api-token "$$token"

test: deps lint rust-tests doc-tests restart-tests chart-test observability-test browser-test

deps:
	scripts/ensure-rabbitmq
	scripts/ensure-nextest
	scripts/cluster-test --prepare
	scripts/browser-test --prepare

lint: fmt-check clippy deny

deny:
	scripts/ensure-cargo-deny
	$(CARGO) deny --log-level error check licenses bans sources

fmt-check:
	$(CARGO) fmt --all -- --check

clippy:
	$(CARGO) clippy --all-targets -- -D warnings

rust-tests:
	$(CARGO) nextest run --profile ci -E 'not $(ISOLATED)'

doc-tests:
	$(CARGO) test --doc --quiet

restart-tests:
	$(CARGO) nextest run --profile ci -E '$(ISOLATED)'
	scripts/ensure-rabbitmq

chart-test:
	scripts/chart-test

observability-test:
	scripts/observability-test

browser-test:
	scripts/browser-test

cluster-test:
	scripts/cluster-test

load:
	scripts/ensure-rabbitmq >/dev/null
	$(CARGO) build --release --quiet --bin longpoll-gateway --bin lp-load
	$(CARGO) run --release --quiet --bin lp-load -- compare --plan load \
	    --duration 10s --steady-rate 2000 --out target/load

bench:
	$(CARGO) bench

# lp-load compare starts and stops every server itself; only the packages are
# installed here (scripts/ensure-*). Its knobs: lp-load compare --help (the
# BENCH_* variables still work).
bench-compare:
	scripts/ensure-rabbitmq >/dev/null
	scripts/ensure-nchan
	$(CARGO) build --release --quiet --bin longpoll-gateway --bin lp-load
	$(CARGO) run --release --quiet --bin lp-load -- compare

image:
	docker build -t longpoll-gateway:$$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1) .

clean:
	$(CARGO) clean
