# cartlytics: `make run` starts everything on this machine, `make test` runs every check.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint typecheck unit gen docs venv clean bench bench-ingest bench-metrics

venv: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	@touch $(STAMP)

## run: start all services, the REST gateway (:8080) and gRPC (:50051) with embedded ClickHouse and Redis
run: $(STAMP)
	$(BIN)/cartlytics run --target all

## test: lint, type-check and the whole pytest suite
test: lint typecheck unit

lint: $(STAMP)
	$(BIN)/ruff check src services gateway tests tools bench
	$(BIN)/ruff format --check src services gateway tests tools bench
	$(BIN)/buf lint

typecheck: $(STAMP)
	$(BIN)/mypy

unit: $(STAMP)
	$(BIN)/pytest $(PYTEST_ARGS)

## bench: every benchmark with its references, on chdb and (when on PATH) clickhouse-server, into
## bench/results/latest.{json,md} (26 min measured; BENCH_ARGS=--quick: ~5 min, bench/results/quick.*)
bench: $(STAMP)
	$(BIN)/python bench/run.py $(BENCH_ARGS)

## bench-ingest / bench-metrics: the benchmarks quoted in the README (minutes; not part of `make test`)
bench-ingest: $(STAMP)
	$(BIN)/python bench/ingest.py --seconds 10 --connections 8
	$(BIN)/python bench/ingest.py --seconds 10 --connections 64

bench-metrics: $(STAMP)
	$(BIN)/python bench/metrics.py --events 10000000 --requests 30

## docs: refresh the README configuration table
docs: $(STAMP)
	$(BIN)/python tools/update_readme_config.py

## gen: regenerate Python code, type stubs, the descriptor set and docs/openapi.json from proto/
gen: $(STAMP)
	$(BIN)/python tools/gen_protos.py

clean:
	rm -rf $(VENV) data
