# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
PY      ?= python3.11
VENV    := .venv
VPY     := $(VENV)/bin/python
# torch/torchvision are pinned to the releases that lie on the development machines' disk
# (plain pip finds them there; see DEVELOPERS notes in README.md).
TORCH   := torch==2.14.1 torchvision==0.29.1
FMNIST  := /usr/share/datasets/fashion-mnist
# The LiteRT converter beside ExecuTorch (issue 22): litert-torch needs xdsl 0.28.0, which pins
# typing-extensions<4.13, while executorch's coremltools needs cattrs (typing-extensions>=4.14) and the serve extra's
# pydantic 2.14 needs >=4.16: pip cannot resolve them together. So the converter's own packages go in with --no-deps
# and the rest of their requirements (none pins typing-extensions) with the resolver; `pip check` then reports
# xdsl's pin and nothing else, and the LiteRT tests convert, quantize and run with the newer typing-extensions.
# Elsewhere, without executorch and serve, `pip install 'mobilenets[litert-convert]'` is the plain way.
LITERT_PKGS := litert-torch==0.10.0 litert-converter==0.5.0 ai-edge-quantizer==0.10.0 litert-lm-builder==0.18.1 \
	xdsl==0.28.0
LITERT_DEPS := 'ai-edge-litert==2.3.0' absl-py scipy multipledispatch transformers kagglehub tabulate 'torchao>=0.17' \
	jax jaxtyping fire sentencepiece rich lark 'immutabledict<4.2.2' 'ordered-set==4.1.0' tomli

.PHONY: venv data browser demo test bench clean

$(VENV)/.installed: pyproject.toml
	test -x $(VPY) || $(PY) -m venv $(VENV)
	$(VPY) -m pip install -q --upgrade pip
	$(VPY) -m pip install -q $(TORCH)
	$(VPY) -m pip install -q -e '.[test]'
	$(VPY) -m pip install -q $(LITERT_DEPS)
	$(VPY) -m pip install -q --no-deps $(LITERT_PKGS)
	$(VPY) -c "import litert_torch, ai_edge_quantizer, ai_edge_litert.interpreter, executorch"
	touch $@

venv: $(VENV)/.installed

# Fashion-MNIST from Debian's package (installs the four idx files into $(FMNIST)).
data:
	@if [ ! -f $(FMNIST)/train-images-idx3-ubyte.gz ] && [ ! -f $(FMNIST)/train-images-idx3-ubyte ]; then \
		echo "installing Debian package dataset-fashion-mnist"; \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist) \
		|| { echo "could not install dataset-fashion-mnist; run 'apt-get install dataset-fashion-mnist' as root or pass --data DIR"; exit 1; }; \
	fi

# Debian's chromium and chromium-driver: the serve page test drives a real headless browser.
browser:
	@if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then \
		echo "installing Debian packages chromium chromium-driver"; \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver) \
		|| { echo "could not install chromium and chromium-driver; run 'apt-get install chromium chromium-driver' as root"; exit 1; }; \
	fi

demo: venv data
	$(VENV)/bin/mobilenets demo --out runs/demo

# The suite runs on two workers (pytest-xdist), then its numerics-sensitive files again with the CPU kernels held
# below this host's instruction set (tests/lowered_isa.py); both passes share the classifiers trained for the tests.
PYTEST_WORKERS ?= 2
test: venv data browser
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/lint-imports
	$(VENV)/bin/mypy
	trained=$$(mktemp -d) && export MOBILENETS_TEST_TRAINED=$$trained && \
	$(VPY) -m pytest -q -n $(PYTEST_WORKERS) && $(VPY) tests/lowered_isa.py -q -n $(PYTEST_WORKERS); \
	rc=$$?; rm -rf $$trained; exit $$rc

bench: venv data  # the minutes-long benchmarks; the hour-long ones are listed in BENCHMARKS.md
	$(VPY) benchmarks/zoo_params_macs.py
	$(VPY) benchmarks/bench_runtimes.py --batch 1,32 --rounds 20 --large-batch-rounds 6 --out benchmarks/deploy_bench_idle

clean:
	rm -rf $(VENV) runs build *.egg-info src/*.egg-info
