# The two commands of the README: `make run` and `make test`. Both create
# .venv (Python 3.11+) and install what they need; nothing else is required.
# Another Python in its own venv (.ci/run tests the oldest and the newest):
#   make test PYTHON=python3.13 VENV=.venv-3.13
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
CONFIG ?=

.PHONY: run test bench mutate venv clean

$(STAMP): setup.cfg pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11) and "evsrv needs Python 3.11 or newer")'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip setuptools wheel
	# compat mode: twistd only sees twisted/plugins/ through a .pth entry
	$(BIN)/pip install -q -e '.[test]' --config-settings editable_mode=compat
	$(BIN)/python -c 'from twisted.plugin import IPlugin, getPlugins; list(getPlugins(IPlugin))'
	touch $(STAMP)

venv: $(STAMP)

# Runs the server in the foreground; CONFIG=etc/evsrv.ini to use a file,
# otherwise the embedded default (MI on udp:127.0.0.1:8080).
run: $(STAMP)
	$(BIN)/twistd -n --pidfile= evsrv $(if $(CONFIG),-c $(CONFIG))

# Pick tests with PYTEST_ARGS, quoted as one make argument:
#   make test PYTEST_ARGS='-k expiry'
# (not `PYTEST_ARGS=-k expiry make test`: the shell would run a program named
# `expiry` with PYTEST_ARGS=-k in its environment).
# tools/ensure-rabbitmq starts the local RabbitMQ when one is installed but not
# running; without a broker the AMQP tests skip (CI sets EVSRV_REQUIRE_BROKER=1
# to make them fail instead).
test: $(STAMP)
	-PYTHON=$(BIN)/python tools/ensure-rabbitmq
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

bench: $(STAMP)
	$(BIN)/python bench/run_all.py

# Mutation testing (issue 16; not part of `make test`, it takes a while): each
# module's own tests run against small changes of its code (tools/mutate.py,
# in a private copy of the tree under /tmp: this one is never modified), and a
# table gives the % of mutants killed per module and overall. Equivalent
# mutants are listed in tools/mutate-equivalent.txt. At most -j 2:
#   make mutate MUTATE_ARGS='-j 2'
#   make mutate MUTATE_PATHS=evsrv/evi/subscriptions.py
# (the destination policy is evsrv/evi/policy.py)
MUTATE_PATHS ?= evsrv/evi evsrv/mi evsrv/encoding.py
mutate: $(STAMP)
	$(BIN)/python tools/mutate.py $(MUTATE_ARGS) $(MUTATE_PATHS)

clean:
	rm -rf $(VENV) build *.egg-info
	find . -name dropin.cache -delete
