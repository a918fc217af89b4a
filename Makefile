# Set-up and the two jobs named in the README. Everything installs into the active Python.
PYTHON ?= python
PIP := $(PYTHON) -m pip

.PHONY: install demo test bench

# torch first, paired with its torchvision, so that nothing else can pull a second torch;
# dall-e 0.1 declares unpinned torch/torchvision and test tools as dependencies, hence --no-deps.
# constraints.txt pins the packages that can change a number (torch and torchvision included) to
# the versions the documented numbers were measured with: the same config and seed trained
# differently on another install.
# dall-e goes last: its declared requirements (blobfile, mypy, requests) are not all installed on
# purpose (requests and attrs are, through this package), and installed last pip has nothing to warn about.
install:
	$(PIP) install -c constraints.txt torch torchvision
	$(PIP) install -c constraints.txt -e ".[dev]"
	$(PIP) install --no-deps dall-e==0.1
	@echo "dall-e 0.1 installed without its declared extras (blobfile, mypy): the vq target does not use them."

demo: install
	bash scripts/demo.sh

# two test processes (pytest-xdist), each test file whole in one of them so that a file's shared
# fixtures are built once; TEST_JOBS=0 runs them in one process
TEST_JOBS ?= 2
test: install
	$(PYTHON) -m pytest -q -n $(TEST_JOBS) --dist loadfile

bench: install
	$(PYTHON) benchmarks/run_all.py
