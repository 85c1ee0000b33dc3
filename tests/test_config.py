"""
The ini file: defaults, relative paths and one-line errors; the coercers
and the host:port parser it is read with (docs/configuration.md against the
schema: tests/test_config_schema.py).
"""

from pathlib import Path

import pytest

from evsrv.config import (SCHEMA, Config, ConfigError, HTTPConfig, LimitsConfig, MIConfig,
                          PolicyConfig, StoreConfig, parse_config, read_config)
from evsrv.server import module_factories, transport_factories
from evsrv.util import coercers
from evsrv.util.hostport import parse_host_port


def load(tmp_path, text):
    ini = tmp_path / "evsrv.ini"
    ini.write_text(text)
    return read_config(ini, transport_factories())


def test_embedded_default():
    config = read_config(None, transport_factories())
    assert config.mi.udp == [("127.0.0.1", 8080)]
    assert config.mi.unix == [Path("/tmp/evsrv_mi.sock")]
    # every built-in transport (more arrive as plugins)
    assert {"udp", "unix", "route"} <= set(config.transports)


def test_shipped_ini_is_valid():
    config = read_config(Path(__file__).parent.parent / "etc" / "evsrv.ini", transport_factories(),
                         module_factories())
    assert config.mi.udp == [("127.0.0.1", 8080)]


def test_values_and_relative_paths(tmp_path):
    (tmp_path / "run").mkdir()
    config = load(tmp_path, """
[mi]
udp = 127.0.0.1:0, [::1]:9000   ; two listeners
unix = run/mi.sock
unix_mode = 0600
[events]
publish = E_A, E_B
[transports]
enabled = udp
[transport:udp]
format = text
[transport:unix]
format = json
[expiry]
interval = 0.5
""")
    assert config.mi.udp == [("127.0.0.1", 0), ("::1", 9000)]
    assert config.mi.unix == [(tmp_path / "run" / "mi.sock").resolve()]
    assert config.mi.unix_mode == 0o600
    assert config.events == ["E_A", "E_B"]
    assert config.transports == {"udp": {"format": "text", "source": ("", 0)}}
    assert config.expiry_interval == 0.5


@pytest.mark.parametrize("text, message", [
    ("[nope]\n", "evsrv.ini: [nope]: unknown section"),
    ("[mi]\nudpp = 1\n", "evsrv.ini: [mi] udpp: unknown key"),
    ("[mi]\nudp = 127.0.0.1:99999\n", "evsrv.ini: [mi] udp: bad value '127.0.0.1:99999': bad port"),
    ("[mi]\nudp = localhost:80\n", "evsrv.ini: [mi] udp: bad value 'localhost:80': bad IPv4"),
    ("[mi]\nunix = /no/such/dir/mi.sock\n", "evsrv.ini: [mi] unix: directory /no/such/dir does not exist"),
    ("[mi]\nunix_mode = 999\n", "evsrv.ini: [mi] unix_mode: bad value '999'"),
    ("[transports]\nenabled = udp, carrier-pigeon\n",
     "evsrv.ini: [transports] enabled: unknown transport 'carrier-pigeon' (known: "),
    ("[transport:udp]\nformat = xml\n", "evsrv.ini: [transport:udp] format: bad value 'xml': must be one of json, text"),
    ("[transport:udp]\ncolour = red\n", "evsrv.ini: [transport:udp] colour: unknown key"),
    ("[transports]\nenabled = unix\n[transport:udp]\nformat = xml\n",
     "evsrv.ini: [transport:udp] format: bad value"),
    ("[events]\npublish = E_OK, bad name\n", "evsrv.ini: [events] publish: bad value"),
    ("[expiry]\ninterval = 0\n", "evsrv.ini: [expiry] interval: bad value '0': must be a positive"),
    ("[mi]\nudp = 127.0.0.1:1\nudp = 127.0.0.1:2\n", "evsrv.ini: While reading from"),
    ("no section header\n", "evsrv.ini: File contains no section headers."),
    ("[mi]\nallow = 10.0.0.0/33\n", "evsrv.ini: [mi] allow: bad value '10.0.0.0/33': "
     "'10.0.0.0/33' is not an IP network"),
    ("[mi]\nudp = 127.0.0.1:1\n[mi:udp:127.0.0.1:2]\nallow = any\n",
     "evsrv.ini: [mi:udp:127.0.0.1:2]: no such listener in [mi] udp"),
    ("[mi]\nudp = 127.0.0.1:1\n[mi:udp:127.0.0.1:1]\nallowed = any\n",
     "evsrv.ini: [mi:udp:127.0.0.1:1] allowed: unknown key"),
    ("[mi]\nunix_owner = no-such-user-here\n",
     "evsrv.ini: [mi] unix_owner: bad value 'no-such-user-here': no such user"),
    ("[mi]\nunix_group = no-such-group-here\n",
     "evsrv.ini: [mi] unix_group: bad value 'no-such-group-here': no such group"),
    ("[store]\nbackend = redis\n", "evsrv.ini: [store] backend: bad value 'redis': must be one of"),
    ("[store]\nbatch_delay = 2\n", "evsrv.ini: [store] batch_delay: bad value '2'"),
    ("[policy]\ndeny_destinations = example.com\n",
     "evsrv.ini: [policy] deny_destinations: bad value 'example.com'"),
    ("[limits]\nmax_subscriptions = -1\n", "evsrv.ini: [limits] max_subscriptions: bad value"),
    ("[shutdown]\ntimeout = forever\n", "evsrv.ini: [shutdown] timeout: bad value"),
])
def test_errors_name_file_section_and_key_in_one_line(tmp_path, text, message):
    with pytest.raises(ConfigError) as e:
        load(tmp_path, text)
    line = str(e.value)
    assert "\n" not in line
    assert line.startswith(str(tmp_path / "evsrv.ini"))
    assert message in line, line


def test_unreadable_file(tmp_path):
    with pytest.raises(ConfigError) as e:
        read_config(tmp_path / "missing.ini", transport_factories())
    assert str(e.value) == f"{tmp_path / 'missing.ini'}: cannot read: No such file or directory"


def test_security_defaults():
    config = read_config(None, transport_factories())
    assert "127.0.0.5" in config.mi.allow and "::1" in config.mi.allow
    assert "10.0.0.1" not in config.mi.allow and "10.0.0.1" not in config.http.allow
    assert "169.254.169.254" in config.policy.deny_destinations
    assert "192.0.2.1" in config.policy.allow_destinations
    assert config.store.path == Path.cwd() / "var" / "subscriptions.sqlite"
    assert (config.limits.max_subscriptions, config.limits.max_params_bytes) == (250000, 1048576)
    assert config.shutdown_timeout == 10


def test_per_listener_allow_and_store_paths(tmp_path):
    config = load(tmp_path, """
[mi]
udp = 127.0.0.1:8080, [::]:8081
allow = 127.0.0.1
[mi:udp:[::]:8081]
allow = 10.0.0.0/8, 2001:db8::/32
[store]
directory = ../state
sync = normal
[limits]
max_subscriptions = 0
""")
    assert "10.1.2.3" not in config.mi.allow_for(("127.0.0.1", 8080))
    assert "10.1.2.3" in config.mi.allow_for(("::", 8081))
    assert "::ffff:10.1.2.3" in config.mi.allow_for(("::", 8081))  # a v4 client of a v6 socket
    assert config.store.path == tmp_path.parent / "state" / "subscriptions.sqlite"
    assert config.store.sync == "normal" and config.limits.max_subscriptions == 0
    assert load(tmp_path, "[store]\nbackend = none\n").store.path is None


def test_dataclass_defaults_are_what_an_empty_ini_gives(tmp_path):
    config = parse_config("", "empty.ini", tmp_path, transport_factories())
    assert config.mi == MIConfig() and config.http == HTTPConfig()
    assert config.policy == PolicyConfig() and config.limits == LimitsConfig()
    # the same but for the directory, resolved against the ini's
    assert config.store == StoreConfig(directory=tmp_path / StoreConfig().directory)
    defaults = Config("empty.ini", tmp_path, MIConfig(), [], {})
    assert (config.expiry_interval, config.script, config.shutdown_timeout) == \
        (defaults.expiry_interval, defaults.script, defaults.shutdown_timeout) == (1.0, None, 10)
    assert set(config.transports) == {name for name, f in transport_factories().items()
                                      if getattr(f, "builtin", False)}


def test_schema_sections_are_the_known_ones(tmp_path):
    # every schema section is accepted by the parser; a key of none is not
    for section, options in SCHEMA.items():
        if section.startswith(("mi:udp:", "upstream:")):
            continue  # patterns, with required keys (tests/test_upstream.py)
        ini = f"[{section}]\n" + "".join(f"{key} = {default}\n" for key, (default, _, _)
                                          in options.items() if default)
        parse_config(ini, "x.ini", tmp_path, transport_factories())


@pytest.mark.parametrize("coerce, text, value", [
    (coercers.positive(float), "0.5", 0.5),
    (coercers.positive(int), "3", 3),
    (coercers.non_negative(int), "0", 0),
    (coercers.bounded(int, 512, 65507), "512", 512),
    (coercers.bounded(int, 512, 65507), "65507", 65507),
    (coercers.bounded(float, 0, None), "7.5", 7.5),
    (coercers.seconds, "0", 0.0),
    (coercers.positive_seconds, "86400", 86400.0),
    (coercers.seconds_or_never, "0", 0.0),
    (coercers.seconds_or_never, "2.5", 2.5),
    (coercers.yes_no, "Yes", True),
    (coercers.yes_no, "off", False),
    (coercers.yes_no, "0", False),
    (coercers.choice("json", "text"), "text", "text"),
    (coercers.choice("json", "text", ignore_case=True), " JSON", "json"),
    (coercers.comma_list, "a, b,\n c,,", ["a", "b", "c"]),
    (coercers.comma_list, "", []),
    (coercers.octal_mode(), "0600", 0o600),
    (coercers.octal_mode(0o7777, "0644"), "4755", 0o4755),
    (coercers.user_name, "", None),
    (coercers.user_name, "root", "root"),
    (coercers.group_name, "", None),
])
def test_coercers_accept(coerce, text, value):
    assert coerce(text) == value


@pytest.mark.parametrize("coerce, text, message", [
    (coercers.positive(float), "0", "must be a positive number"),
    (coercers.positive(float), "nan", "must be a positive number"),
    (coercers.non_negative(int), "-1", "must not be negative"),
    (coercers.non_negative(int, "no limit"), "-1", "must be 0 (no limit) or more"),
    (coercers.non_negative(float), "nan", "must not be negative"),
    (coercers.bounded(int, 512, 65507), "511", "must be between 512 and 65507"),
    (coercers.bounded(int, 1024, 2048, "bytes"), "4096", "must be between 1024 and 2048 bytes"),
    (coercers.bounded(float, 0, 1), "nan", "must be between 0 and 1"),
    (coercers.bounded(int, 1), "0", "must be 1 or more"),
    (coercers.seconds, "inf", "must be a number of seconds (0 or more)"),
    (coercers.seconds, "-1", "must be a number of seconds (0 or more)"),
    (coercers.positive_seconds, "0", "above 0 (at most 86400)"),
    (coercers.positive_seconds, "86401", "above 0 (at most 86400)"),
    (coercers.seconds_or_never, "-1", "must be 0 (never) or a number of seconds above 0"),
    (coercers.seconds_or_never, "nan", "must be 0 (never)"),
    (coercers.yes_no, "maybe", "must be yes or no"),
    (coercers.choice("json", "text"), "JSON", "must be one of json, text"),
    (coercers.octal_mode(), "1777", "must be an octal file mode such as 0660"),
    (coercers.octal_mode(), "0999", "invalid literal"),
    (coercers.user_name, "no-such-user-here", "no such user 'no-such-user-here'"),
    (coercers.group_name, "no-such-group-here", "no such group 'no-such-group-here'"),
])
def test_coercers_refuse_with_a_reason(coerce, text, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        coerce(text)


@pytest.mark.parametrize("text, options, expected", [
    ("127.0.0.1:8080", {}, ("127.0.0.1", 8080)),
    (" [::1]:0 ", {}, ("::1", 0)),
    ("example.com:80", {}, ("example.com", 80)),
    (":0", {"empty_host": True}, ("", 0)),
    ("10.0.0.1:65535", {"names": False}, ("10.0.0.1", 65535)),
])
def test_host_port(text, options, expected):
    assert parse_host_port(text, **options) == expected


@pytest.mark.parametrize("text, options, message", [
    ("127.0.0.1", {}, "expected HOST:PORT"),
    (":0", {}, "expected HOST:PORT"),
    ("[]:0", {"empty_host": True}, "bad IPv6 address"),
    ("[10.0.0.1]:1", {}, "bad IPv6 address"),
    ("localhost:80", {"names": False}, "bad IPv4 address 'localhost' (use [v6] for IPv6)"),
    ("::1:80", {"names": False}, "bad IPv4 address"),
    ("127.0.0.1:65536", {}, "bad port '65536'"),
    ("127.0.0.1:-1", {}, "bad port"),
    ("127.0.0.1:８０", {}, "bad port"),
])
def test_host_port_refused(text, options, message):
    with pytest.raises(ValueError) as e:
        parse_host_port(text, **options)
    assert message in str(e.value)
