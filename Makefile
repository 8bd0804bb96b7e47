# r2d: two commands do all set-up.
#   make demo   virtualenv from pinned requirements, simulate a demo dataset from r2d's own
#               phantom, run the workflow (local profile) and write the HTML report
#   make test   run the test suite (about 10 minutes on 2 cores)

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
DEMO   := demo
CORES  ?= 2

.PHONY: all venv demo demo-data test lint clean

all: test

$(BIN)/r2d: requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements.txt
	$(BIN)/pip install --quiet --no-deps -e .
	touch $@

venv: $(BIN)/r2d

$(DEMO)/particles.star: | $(BIN)/r2d
	$(BIN)/r2d simulate --phantom --n 1000 --box 64 --apix 5 --snr 0.1 --shift 3 \
		--ctf flip --defocus 10000 30000 --junk 0.05 --junk-kinds all --seed 1 -o $(DEMO)

demo-data: $(DEMO)/particles.star

demo: venv demo-data
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/snakemake --workflow-profile workflow/profiles/local \
		--cores $(CORES) --config input=$(DEMO)/particles.star path=$(DEMO)/r2d_01 ncls=16 iter=4
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/snakemake --workflow-profile workflow/profiles/local \
		--report $(DEMO)/report.html \
		--config input=$(DEMO)/particles.star path=$(DEMO)/r2d_01 ncls=16 iter=4
	$(BIN)/r2d evaluate $(DEMO)/r2d_01 $(DEMO)/truth.tsv
	@echo "Report:  $(CURDIR)/$(DEMO)/report.html (open in a browser)"
	@echo "Exports: $(CURDIR)/$(DEMO)/r2d_01/export/ (particles.star for RELION, class_averages.mrcs/.star/.hdf)"
	@echo "Subsets: $(BIN)/r2d select $(DEMO)/r2d_01 --auto -o $(DEMO)/selected.star  (or --classes 1,4,7)"

test: venv
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/pytest -q

lint: venv
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/snakemake --lint --config input=$(DEMO)/particles.star
	$(BIN)/snakefmt --check Snakefile workflow/

clean:
	rm -rf $(DEMO) .snakemake
