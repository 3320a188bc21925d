# Two commands do all set-up on a fresh Debian machine:
#   make demo   the main job: kill a shard primary under load on the embedded local testbed,
#               watch the automated failover and print the verdict table
#   make test   run the whole test suite against real redis-server processes
# Both create .venv, install the project and make sure redis-server exists.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test test-etcd suite lint setup system-packages clean

demo: setup
	$(BIN)/ratequeue-chaos run scenarios/primary_kill.yaml --journal-dir chaos-journals

# The compound fault schedules run in a pytest process of their own, so nothing an earlier test
# leaves in the process (the chaos CLI installs SIGTERM/SIGINT handlers; fault auto-rollback
# timers) can act during them.
test: setup
	$(MAKE) --no-print-directory suite

# The same suite with its testbeds, controllers, sensors and APIs on a three-member etcd
# cluster (tests/suite_control.py; which files pass there: docs/suite-on-etcd.md).
test-etcd: setup
	RATEQUEUE_SUITE_CONTROL=etcd $(MAKE) --no-print-directory suite

# The suite itself, on the control store RATEQUEUE_SUITE_CONTROL names (redis when unset).
suite:
	$(BIN)/ruff check .
	$(BIN)/pytest --ignore=tests/test_compound_faults.py
	$(BIN)/pytest tests/test_compound_faults.py

lint: setup
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

setup: system-packages $(STAMP)

# redis-server (and redis-sentinel, iptables for the fault experiments, etcd for the etcd
# coordination store): installed when running as root and missing; otherwise the exact command
# to run is printed.
system-packages:
	@missing=""; \
	for pair in redis-server:redis-server redis-sentinel:redis-sentinel iptables:iptables \
	    etcd:etcd-server etcdctl:etcd-client; do \
	  cmd=$${pair%%:*}; pkg=$${pair##*:}; \
	  command -v $$cmd >/dev/null 2>&1 || [ -x /usr/sbin/$$cmd ] || [ -x /usr/bin/$$cmd ] \
	    || missing="$$missing $$pkg"; \
	done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing Debian packages:$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	  else \
	    echo "missing Debian packages:$$missing; install them with: sudo apt-get install$$missing"; \
	    exit 1; \
	  fi; \
	fi
	@# The Debian packages start a system redis on 6379 and a system etcd on 2379; the project
	@# never uses them (its clusters are on free ports, common/etcd_processes.py).
	@if [ "$$(id -u)" = 0 ] && command -v systemctl >/dev/null 2>&1; then \
	  for unit in redis-server etcd; do systemctl disable --now $$unit >/dev/null 2>&1 || true; done; fi
	@if [ "$$(id -u)" = 0 ] && [ -x /etc/init.d/etcd ] && ! [ -d /run/systemd/system ]; then \
	  invoke-rc.d etcd stop >/dev/null 2>&1 || true; update-rc.d etcd disable >/dev/null 2>&1 || true; fi

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test,load,ctk]'
	@# A venv where this project once installed a `chaos` script: upgrading it removed that file
	@# after Chaos Toolkit wrote its own there; `chaos` is Chaos Toolkit's (README). The same
	@# version is reinstalled, so this puts the script back without upgrading anything.
	grep -qs chaostoolkit $(BIN)/chaos || $(BIN)/pip install -q --force-reinstall --no-deps \
	  "chaostoolkit==$$($(BIN)/python -c 'from importlib.metadata import version; print(version("chaostoolkit"))')"
	touch $(STAMP)

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache build *.egg-info
