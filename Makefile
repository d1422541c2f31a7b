# cartlytics: `make run` starts everything on this machine, `make test` runs every check.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TOOLS_STAMP := .tools/.installed

.PHONY: run demo dashboard test lint typecheck unit gen docs venv tools clean bench bench-ingest bench-metrics

venv: $(STAMP)

# The Python SDK and its stubs distribution are installed beside the server (editable), so the
# SDK's suite runs in the same venv; neither pins anything the top-level pyproject does not.
CLIENT_PYPROJECTS := clients/python/protos/pyproject.toml clients/python/client/pyproject.toml

$(STAMP): pyproject.toml $(CLIENT_PYPROJECTS)
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	$(BIN)/pip install --quiet --no-deps -e clients/python/protos -e clients/python/client
	@touch $(STAMP)

## run: start all services, the REST gateway (:8080) and gRPC (:50051) with embedded ClickHouse and Redis
run: $(STAMP)
	$(BIN)/cartlytics run --target all

## demo: start everything (as `make run`) and load a demo shop, a year of events in four
## currencies, on a first start; then open http://127.0.0.1:8080/ with the printed key
## (DEMO_EVENTS=... for another size; `make run` later serves the same data)
DEMO_EVENTS ?= 200000
demo: $(STAMP)
	$(BIN)/cartlytics demo --events $(DEMO_EVENTS)

## dashboard: rebuild the dashboard (dashboard/, TypeScript) into gateway/dashboard_assets/, which
## is committed: `make run` needs no Node (tests/test_dashboard_assets.py fails when it is stale)
dashboard:
	cd dashboard && npm ci --no-audit --no-fund && npm run --silent build

## test: lint, type-check and the whole pytest suite
test: lint typecheck unit

lint: $(STAMP)
	$(BIN)/ruff check src services gateway tests tools bench clients/python/client
	$(BIN)/ruff format --check src services gateway tests tools bench clients/python/client
	$(BIN)/buf lint
	$(BIN)/lint-imports --no-logo --no-cache

typecheck: $(STAMP)
	$(BIN)/mypy

unit: $(STAMP) $(TOOLS_STAMP)
	$(BIN)/pytest $(PYTEST_ARGS)

## bench: every benchmark with its references, on chdb and (when on PATH) clickhouse-server, and
## issue 16's targets with pass/fail; with zookeeper installed too, a 2x2 cluster beside the server
## (ingest, queries, their ratios); into bench/results/latest.{json,md} (26 min measured without
## the cluster, which adds ~11-12 min (9.5 measured at 10M alone); BENCH_ARGS=--quick: ~8 min, bench/results/quick.*)
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

## tools: the code generators and client toolchains, pinned in clients/go/go.mod (`tool`),
## clients/js/package-lock.json and dashboard/package-lock.json: protoc-gen-go(-grpc) into
## .tools/bin, npm packages of clients/js and of the dashboard (esbuild, TypeScript, axe-core)
tools: $(TOOLS_STAMP)

$(TOOLS_STAMP): clients/go/go.mod clients/go/go.sum clients/js/package-lock.json dashboard/package-lock.json
	cd clients/go && GOBIN=$(CURDIR)/.tools/bin go install \
		google.golang.org/protobuf/cmd/protoc-gen-go google.golang.org/grpc/cmd/protoc-gen-go-grpc
	cd clients/go && go mod download
	cd clients/js && npm ci --no-audit --no-fund
	cd dashboard && npm ci --no-audit --no-fund
	@mkdir -p .tools && touch $(TOOLS_STAMP)

## gen: regenerate Python, Go and TypeScript code, the descriptor set and docs/openapi.json from
## proto/ (buf.gen.yaml)
gen: $(STAMP) $(TOOLS_STAMP)
	$(BIN)/python tools/gen_protos.py

clean:
	rm -rf $(VENV) data .tools clients/js/node_modules dashboard/node_modules
