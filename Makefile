# Developer shortcuts. The README's two commands are what CI and operators run.
VENV ?= .venv
PY := $(VENV)/bin/python
POLICIES := $(wildcard policies/*.yaml)

.PHONY: flows docs lint test unit integration kernel-test vagrant-box vagrant-smoke lock

flows: ## regenerate flows/NAME.flows from policies/NAME.yaml (golden files)
	@for p in $(POLICIES); do n=$$(basename $$p .yaml); \
	  $(VENV)/bin/ovsmgr compile $$p > flows/$$n.flows || exit 1; echo "flows/$$n.flows"; done
	@rm -f flows/*.actual

docs: ## regenerate the generated docs and schema
	$(PY) -m ovsmgr.render.text > docs/pipeline.md
	$(VENV)/bin/ovsmgr schema > schema/ovsmgr-policy.schema.json

lint:
	$(VENV)/bin/ruff check ovsmgr tests
	$(VENV)/bin/mypy

unit:
	$(PY) -m pytest tests/unit -q

integration:
	$(PY) -m pytest tests/integration -q

kernel-test: ## the real-traffic scenarios on the kernel datapath, in a QEMU guest (root; vagrant/README.md)
	./vagrant/guest/kernel-test $(if $(KT_ONLY),--only $(KT_ONLY))

vagrant-box: ## the test VMs' Vagrant box, from the kernel-test image, added as ovsmgr/bookworm64 (root; vagrant/README.md)
	./scripts/install --packages-only vm vagrant
	./vagrant/guest/vagrant-box build >/dev/null

vagrant-smoke: ## boot gen, dut and sink, ovsmgr apply, the three-box bench smoke, destroy (root; vagrant/README.md)
	./scripts/install --packages-only vm vagrant
	./vagrant/run smoke

lock: ## refresh requirements.lock from pyproject.toml's ranges, on purpose (scripts/lock; PyPI)
	./scripts/lock
