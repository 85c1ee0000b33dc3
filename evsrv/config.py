# -*- test-case-name: tests.test_config -*-
"""
The ini file, read and checked apart from building anything: unknown
sections or keys, bad values and unreadable files are L{ConfigError}s that
name the file, section and key in one line.

Every core setting is declared once, in L{SCHEMA}: its default (as ini
text), its coercer and its help, the shape plugins use for their
C{options}. The parser reads from it, the dataclasses below take their
defaults from it, and C{tests/test_config_schema.py} checks
C{docs/configuration.md} and C{etc/evsrv.ini} against it.

Relative paths are taken from the ini file's directory (from the working
directory for the embedded default).
"""

import configparser
import fnmatch
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, NamedTuple

from evsrv.evi.events import MAX_EVENT_NAME
from evsrv.util.coercers import (bounded, choice, comma_list, group_name, non_negative,
                                 octal_mode, positive, seconds, user_name)
from evsrv.util.hostport import parse_host_port
from evsrv.util.netlist import LOOPBACK, NetworkList

# Published by the core, in OpenSIPS 3.x order; E_CORE_LOG comes after the
# events of the ini, as OpenSIPS publishes it after the script's.
CORE_EVENTS = ("E_CORE_SR_STATUS_CHANGED", "E_CORE_THRESHOLD", "E_CORE_SHM_THRESHOLD",
               "E_CORE_PKG_THRESHOLD", "E_CORE_PROC_AUTO_SCALE", "E_CORE_TCP_DISCONNECT")
LATE_CORE_EVENTS = ("E_CORE_LOG",)

DEFAULT_INI = """\
; The embedded default configuration (used when no -c is given); every
; built-in transport is enabled.
[mi]
udp = 127.0.0.1:8080
unix = /tmp/evsrv_mi.sock
; where opensips-cli and opensips-mi look when given no options; taken by
; another program (an OpenSIPS, another evsrv): start without it
fifo = /tmp/opensips_fifo
fifo_taken = skip
[http]
listen = 127.0.0.1:8888
"""


def builtin_transports(transport_factories: dict) -> list:
    """
    Names of evsrv's own transports, enabled when C{[transports] enabled}
    is not given (a transport costs nothing until something subscribes).
    """
    return sorted(name for name, f in transport_factories.items() if getattr(f, "builtin", False))


class ConfigError(Exception):
    """
    A bad configuration; C{str()} is the one line to show.
    """

    def __init__(self, source, section=None, key=None, message=""):
        where = str(source)
        if section is not None:
            where += f": [{section}]"
            if key is not None:
                where += f" {key}"
        super().__init__(f"{where}: {message}")


# Destinations no subscriber may name unless [policy] deny_destinations says
# otherwise: "this host" and unspecified, link-local (most cloud metadata
# services live there), multicast, reserved and broadcast; then the cloud
# metadata and platform addresses outside link-local, which hand out
# credentials or configuration to whoever on the instance asks: Alibaba
# Cloud, Oracle Cloud Classic, Azure's WireServer, and the IPv6 twins of
# link-local services: AWS instance metadata and EKS Pod Identity, Google
# Cloud, Oracle Cloud, Akamai/Linode and Scaleway.
DEFAULT_DENIED_DESTINATIONS = (
    "0.0.0.0/8, 169.254.0.0/16, 224.0.0.0/3, ::/128, fe80::/10, ff00::/8, "
    "100.100.100.200, 192.0.0.192, 168.63.129.16, "
    "fd00:ec2::254, fd00:ec2::23, fd20:ce::254, fd00:c1::a9fe:a9fe, fd00:a9fe:a9fe::1, "
    "fd00:42::42")


# -- coercers of the core settings (the generic ones: evsrv.util.coercers) ---

def _listen_address(text: str) -> tuple:
    # a listener binds an address: an IP literal
    return parse_host_port(text, names=False)


def _listen_addresses(text: str) -> list:
    return [_listen_address(a) for a in comma_list(text)]


def _optional_listen_address(text: str) -> tuple | None:
    return _listen_address(text) if text else None


def _paths(text: str) -> list:
    # relative to the ini file's directory: parse_config resolves them
    return [Path(p) for p in comma_list(text)]


def _optional_path(text: str) -> Path | None:
    return Path(text) if text else None


def _url_path(text: str) -> str:
    if text and (not text.startswith("/") or not text.isascii() or not text.isprintable()
                 or any(c in text for c in " ?#")):
        raise ValueError("must be empty (off) or a URL path such as /mi")
    return text


def _event_name(text: str) -> str:
    if len(text.encode()) > MAX_EVENT_NAME or not text.replace("_", "a").isalnum():
        raise ValueError(f"bad event name {text!r} (letters, digits and _, "
                         f"at most {MAX_EVENT_NAME} bytes)")
    return text


def _event_names(text: str) -> list:
    return [_event_name(e) for e in comma_list(text)]


_GLOB_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_*?[]!-")


def _event_globs(text: str) -> list:
    globs = comma_list(text)
    for glob in globs:
        if not set(glob) <= _GLOB_CHARS:
            raise ValueError(f"bad pattern {glob!r} (event name characters and * ? [ ] !)")
    return globs


def _required_event_names(text: str) -> list:
    names = _event_names(text)
    if not names:
        raise ValueError("name at least one event")
    return names


def _upstream_mi(text: str) -> tuple:
    # ("udp", host, port) or ("http", url): the proxy's mi_datagram or mi_http
    if text.startswith(("http://", "https://")):
        rest = text.split("://", 1)[1]
        if not rest or rest[0] in "/?#" or not text.isascii() or any(c.isspace() for c in text):
            raise ValueError("expected http://HOST:PORT/PATH")
        return ("http", text)
    if text.startswith("udp:"):
        host, port = parse_host_port(text[4:])
        if not port:
            raise ValueError("port 0 is not an MI address")
        return ("udp", host, port)
    raise ValueError("expected udp:HOST:PORT or http://HOST:PORT/PATH")


def _upstream_socket(text: str) -> str:
    # as the proxy parses it (spec §4.1, §4.4): the host ends at the first ':'
    if text in ("", "udp", "tcp", "unix"):
        return text  # the first [ingest] listener (of that kind) as bound
    scheme, _, rest = text.partition(":")
    if scheme == "unix" and rest.startswith("/"):
        return text
    if scheme in ("udp", "tcp"):
        host, _, port = rest.partition(":")
        if host and ":" not in port and port.isascii() and port.isdigit() \
                and 0 < int(port) < 65536 and host.isascii() and " " not in host:
            return text
    raise ValueError("expected udp:HOST:PORT, tcp:HOST:PORT, unix:/PATH, or udp, tcp or unix "
                     "alone (an IPv4 address or a name: OpenSIPS cannot send to IPv6 "
                     "literals)")


# -- the schema --------------------------------------------------------------

class Setting(NamedTuple):
    """
    One ini key: the shape of a plugin's C{options} values, C{(default,
    coerce, help)}.
    """
    default: str | None  # ini text; None: worked out by parse_config (help says how)
    coerce: Callable     # text -> value, or ValueError with the reason
    help: str            # the meaning column of docs/configuration.md (markdown)


LISTENER_SECTION = "mi:udp:HOST:PORT"  # one per [mi] udp listener, HOST:PORT as written there
UPSTREAM_SECTION = "upstream:NAME"  # one per OpenSIPS proxy evsrv subscribes at

# section -> key -> Setting, in reading order (which error a file with several
# shows first). docs/configuration.md's reference table has a row for each,
# with this default and help (tests/test_config_schema.py).
SCHEMA = {
    "mi": {
        "udp": Setting("", _listen_addresses,
                       "comma-separated `HOST:PORT` UDP MI listeners (`[v6]:PORT` for IPv6; "
                       "port 0 = any)"),
        "unix": Setting("", _paths,
                        "comma-separated UNIX datagram MI socket paths; a stale socket file is "
                        "replaced, a live one is refused"),
        "unix_mode": Setting("0660", octal_mode(0o777, "0660"),
                             "file mode of the UNIX sockets (clients need write permission)"),
        "unix_owner": Setting("", user_name,
                              "user name given the UNIX socket files (needs root)"),
        "unix_group": Setting("", group_name, "group name given the UNIX socket files"),
        "fifo": Setting("", _paths,
                        "comma-separated MI FIFO paths (OpenSIPS `mi_fifo`: JSON-RPC and "
                        "1.x text); a missing FIFO is made, a stale one of ours reused, "
                        "anything else is left alone (see `fifo_taken`)"),
        "fifo_taken": Setting("fail", choice("fail", "skip"),
                              "when a FIFO cannot be used (the path is not a FIFO, belongs to "
                              "another user or another process reads it; or it cannot be "
                              "made): `fail` (start-up stops, one line says why) or `skip` (a "
                              "warning, and no FIFO there; the embedded default's choice)"),
        "fifo_mode": Setting("0660", octal_mode(0o777, "0660"),
                             "file mode of the FIFOs (clients need write permission)"),
        "fifo_owner": Setting("", user_name, "user name given the FIFO files (needs root)"),
        "fifo_group": Setting("", group_name, "group name given the FIFO files"),
        "fifo_reply_dir": Setting("/tmp", Path,
                                  "directory of the clients' reply FIFOs; a request names "
                                  "its reply FIFO by a bare file name in it"),
        "fifo_max_request": Setting("65536", bounded(int, 1024, 1 << 30, "bytes"),
                                    "largest FIFO request, bytes (larger: skipped, answered "
                                    "with an error, counted in `mi:fifo_requests_too_large`)"),
        "max_datagram": Setting("65457", bounded(int, 512, 65507), "largest reply datagram"),
        "request_timeout": Setting("10", positive(float),
                                   "seconds before a command still running is answered "
                                   "`500 Request timed out` (its outcome unknown; it runs on)"),
        "allow": Setting(LOOPBACK, NetworkList.parse,
                         "sources the UDP listeners serve: networks or addresses, `any`, "
                         "`none`; others get no reply"),
    },
    LISTENER_SECTION: {
        "allow": Setting(LOOPBACK, NetworkList.parse,
                         "this listener's own allow list, replacing `[mi] allow` (`HOST:PORT` "
                         "as in `[mi] udp`)"),
    },
    "http": {
        # off unless the ini says so; the embedded default turns it on
        "listen": Setting("", _optional_listen_address,
                          "`HOST:PORT` of the HTTP site (MI, metrics and status page; "
                          "`[v6]:PORT`; port 0 = any)"),
        "mi_path": Setting("/mi", _url_path, "path of the JSON-RPC MI (empty: off)"),
        "metrics_path": Setting("/metrics", _url_path,
                                "path of the Prometheus metrics (empty: off)"),
        "max_request": Setting("1048576", bounded(int, 1024, 1 << 30, "bytes"),
                               "largest request body, bytes (larger: 413, connection closed)"),
        "idle_timeout": Setting("60", positive(float),
                                "seconds a connection may stay silent (between keep-alive "
                                "requests too) before it is closed; also the time a request "
                                "body has in all, from the end of its headers (past it: 408)"),
        "header_timeout": Setting("10", positive(float),
                                  "seconds a client has to send a request line and all headers, "
                                  "from the connection's start (keep-alive: from the next "
                                  "request's first byte), however steadily the bytes come; past "
                                  "it: 408, connection closed, counted in "
                                  "`http:requests_timed_out`"),
        "status_path": Setting("/status", _url_path,
                               "path of the HTML status page (empty: off)"),
        "status_recent": Setting("20", bounded(int, 0, 1000),
                                 "raised events the status page lists (0–1000)"),
        "allow": Setting(LOOPBACK, NetworkList.parse,
                         "client addresses the HTTP site serves; others are disconnected at "
                         "once"),
    },
    "events": {
        "publish": Setting("", _event_names,
                           "events published at start-up after the core ones"),
    },
    "expiry": {
        "interval": Setting("1.0", positive(float), "seconds between expiry sweeps"),
    },
    "transports": {
        "enabled": Setting(None, comma_list,
                           "transport plugins to load, by name"),
    },
    "modules": {
        "load": Setting("", comma_list,
                        "module plugins to load, by name (see [Modules](scripting.md#modules))"),
    },
    "script": {
        "path": Setting("", _optional_path,
                        "the routing script (see [Routing script](scripting.md#routing-script))"),
    },
    "store": {
        "backend": Setting("sqlite", choice("sqlite", "none"),
                           "`sqlite`: MI subscriptions survive restarts; `none`: memory only"),
        "directory": Setting("var", Path,
                             "the state directory (`subscriptions.sqlite` in it), relative to "
                             "the ini file"),
        "sync": Setting("full", choice("full", "normal"),
                        "`full`: an answered subscribe survives a power cut; `normal`: a crash "
                        "of evsrv"),
        "batch_delay": Setting("0.01",
                               bounded(float, 0, 1, "second (MI clients wait 0.1 s for answers)"),
                               "seconds a change waits for others to share its disk sync (0–1)"),
    },
    "policy": {
        "allow_destinations": Setting("any", NetworkList.parse,
                                      "networks subscribers' destinations must be in (after "
                                      "name resolution)"),
        "deny_destinations": Setting(DEFAULT_DENIED_DESTINATIONS, NetworkList.parse,
                                     "networks no destination may be in (wins over allow; an "
                                     "IPv6 address carrying an IPv4 one is judged by both); by "
                                     "default \"this host\", link-local, multicast, reserved "
                                     "and broadcast, and the cloud metadata and platform "
                                     "addresses (see [Destination policy](security.md#"
                                     "destination-policy-where-subscribers-may-make-evsrv-send))"),
    },
    "limits": {
        "max_subscriptions": Setting("250000", non_negative(int, "no limit"),
                                     "subscriptions in all (0: no limit)"),
        "max_subscriptions_per_event": Setting("100000", non_negative(int, "no limit"),
                                               "subscriptions of one event (0: no limit)"),
        "max_params_bytes": Setting("1048576", non_negative(int, "no limit"),
                                    "bytes of parameter names and values in one raise "
                                    "(0: no limit)"),
        "max_queued_bytes": Setting("67108864", non_negative(int, "no limit"),
                                    "bytes of notifications the transports hold in all "
                                    "(queued, or awaiting a reply or confirm); what does "
                                    "not fit is dropped and counted (0: no limit)"),
    },
    "ingest": {
        "udp": Setting("", _listen_addresses,
                       "comma-separated `HOST:PORT` UDP listeners for OpenSIPS event_datagram "
                       "notifications (`[v6]:PORT`; port 0 = any)"),
        "unix": Setting("", _paths,
                        "comma-separated UNIX datagram socket paths for event_datagram "
                        "`unix:` notifications"),
        "unix_mode": Setting("0660", octal_mode(0o777, "0660"),
                             "file mode of the UNIX sockets (the proxy's user needs write "
                             "permission)"),
        "tcp": Setting("", _listen_addresses,
                       "comma-separated `HOST:PORT` TCP listeners for OpenSIPS event_stream "
                       "notifications (reliable mode answered; port 0 = any)"),
        "events": Setting("*", _event_globs,
                          "shell patterns of the events taken (an event taken for the first "
                          "time is published); others are refused, counted in "
                          "`ingest:refused`"),
        "allow": Setting(LOOPBACK, NetworkList.parse,
                         "sources the UDP and TCP listeners take notifications from; others "
                         "are ignored, counted in `ingest:denied`"),
        "max_size": Setting("65536", bounded(int, 512, 16 << 20, "bytes"),
                            "largest notification, bytes (larger: not raised, counted in "
                            "`ingest:bad_input`)"),
        "max_rate": Setting("5000", non_negative(int, "no limit"),
                            "notifications per second from one source address; UDP beyond it "
                            "is dropped (`ingest:flooded`), TCP is read more slowly "
                            "(`ingest:throttled`) (0: no limit)"),
        "max_events": Setting("1000", non_negative(int),
                              "events the ingest may publish; a new event beyond it is "
                              "refused"),
        "max_connections": Setting("64", bounded(int, 1, 100000),
                                   "TCP connections open at once (one more is closed at once)"),
        "loop_window": Setting("2", seconds,
                               "seconds during which an event with the same name and "
                               "parameters as one the ingest raised is an echo of evsrv's own "
                               "output and not raised again (see [Loops](opensips-integration"
                               ".md#loops)); 0: off"),
    },
    UPSTREAM_SECTION: {
        "mi": Setting(None, _upstream_mi,
                      "the proxy's MI: `udp:HOST:PORT` (mi_datagram) or "
                      "`http://HOST:PORT/PATH` (mi_http); required"),
        "events": Setting(None, _required_event_names,
                          "comma-separated events to subscribe to at the proxy; required"),
        "socket": Setting("", _upstream_socket,
                          "the ingest address as the proxy must see it: `udp:HOST:PORT`, "
                          "`tcp:HOST:PORT` or `unix:/PATH`; `udp`, `tcp` or `unix` alone: "
                          "the first `[ingest]` listener of that kind as bound (empty: the "
                          "first listener, udp before tcp before unix)"),
        "expire": Setting("120", bounded(int, 3, (1 << 31) - 1, "seconds"),
                          "seconds each subscription lasts at the proxy; refreshed at two "
                          "thirds of it"),
        "check_interval": Setting("10", positive(float),
                                  "seconds between checks of the proxy (`uptime` and "
                                  "`subscribers_list`: a restart or a lost subscription "
                                  "subscribes again)"),
        "timeout": Setting("2", positive(float),
                           "seconds an MI call to the proxy may take"),
        "retry_min": Setting("1", positive(float),
                             "seconds before the first retry while the proxy fails"),
        "retry_max": Setting("60", positive(float),
                             "the most seconds between retries (the delay doubles up to it)"),
    },
    "shutdown": {
        "timeout": Setting("10", seconds,
                           "seconds the transports get at SIGTERM to deliver what they hold "
                           "(after the MI has closed); 0: do not wait, drop it (and report it)"),
    },
}


def _default(section: str, key: str):
    """
    A dataclass field defaulting to what C{SCHEMA[section][key]}'s default
    text gives (a relative path stays relative: parse_config resolves it).
    """
    setting = SCHEMA[section][key]
    return field(default_factory=lambda: setting.coerce(setting.default))


# -- what the parser returns ---------------------------------------------------

@dataclass
class MIConfig:
    udp: list = _default("mi", "udp")    # [(host, port)]
    unix: list = _default("mi", "unix")  # [Path]
    unix_mode: int = _default("mi", "unix_mode")
    unix_owner: str | None = _default("mi", "unix_owner")  # user name; None: the server's
    unix_group: str | None = _default("mi", "unix_group")  # group name; None: the server's
    fifo: list = _default("mi", "fifo")  # [Path]
    fifo_taken: str = _default("mi", "fifo_taken")  # "fail" or "skip"
    fifo_mode: int = _default("mi", "fifo_mode")
    fifo_owner: str | None = _default("mi", "fifo_owner")  # user name; None: the server's
    fifo_group: str | None = _default("mi", "fifo_group")  # group name; None: the server's
    fifo_reply_dir: Path = _default("mi", "fifo_reply_dir")
    fifo_max_request: int = _default("mi", "fifo_max_request")  # bytes
    max_datagram: int = _default("mi", "max_datagram")
    request_timeout: float = _default("mi", "request_timeout")  # seconds
    # sources allowed on every UDP listener, and per-listener overrides
    # from [mi:udp:HOST:PORT] allow
    allow: NetworkList = _default("mi", "allow")
    listener_allow: dict = field(default_factory=dict)  # (host, port) -> NetworkList

    def allow_for(self, address) -> NetworkList:
        return self.listener_allow.get(address, self.allow)


@dataclass
class StoreConfig:
    backend: str = _default("store", "backend")      # "sqlite" or "none"
    directory: Path = _default("store", "directory")  # the state directory (made at start-up)
    # SQLite synchronous: "full" (power-loss safe) or "normal"
    sync: str = _default("store", "sync")
    batch_delay: float = _default("store", "batch_delay")  # seconds

    @property
    def path(self) -> Path | None:
        if self.backend == "none" or self.directory is None:
            return None
        return self.directory / "subscriptions.sqlite"


@dataclass
class PolicyConfig:
    allow_destinations: NetworkList = _default("policy", "allow_destinations")
    deny_destinations: NetworkList = _default("policy", "deny_destinations")


@dataclass
class LimitsConfig:
    # 0 means no limit
    max_subscriptions: int = _default("limits", "max_subscriptions")
    max_subscriptions_per_event: int = _default("limits", "max_subscriptions_per_event")
    max_params_bytes: int = _default("limits", "max_params_bytes")
    max_queued_bytes: int = _default("limits", "max_queued_bytes")


@dataclass
class HTTPConfig:
    listen: tuple | None = _default("http", "listen")  # (host, port); None: no HTTP site
    mi_path: str = _default("http", "mi_path")            # "": no MI over HTTP
    metrics_path: str = _default("http", "metrics_path")  # "": no metrics
    max_request: int = _default("http", "max_request")    # bytes of request body; larger: 413
    idle_timeout: float = _default("http", "idle_timeout")
    header_timeout: float = _default("http", "header_timeout")
    status_path: str = _default("http", "status_path")    # "": no status page
    status_recent: int = _default("http", "status_recent")
    allow: NetworkList = _default("http", "allow")


@dataclass
class IngestConfig:
    udp: list = _default("ingest", "udp")    # [(host, port)]
    unix: list = _default("ingest", "unix")  # [Path]
    unix_mode: int = _default("ingest", "unix_mode")
    tcp: list = _default("ingest", "tcp")    # [(host, port)]
    events: list = _default("ingest", "events")  # shell globs
    allow: NetworkList = _default("ingest", "allow")
    max_size: int = _default("ingest", "max_size")      # bytes
    max_rate: int = _default("ingest", "max_rate")      # per second and source; 0: no limit
    max_events: int = _default("ingest", "max_events")
    max_connections: int = _default("ingest", "max_connections")
    loop_window: float = _default("ingest", "loop_window")  # seconds; 0: off


@dataclass
class UpstreamConfig:
    mi: tuple            # ("udp", host, port) or ("http", url)
    events: list
    # "udp:HOST:PORT", "tcp:HOST:PORT", "unix:/PATH"; "": the first [ingest]
    # listener of `kind` as bound
    socket: str = _default(UPSTREAM_SECTION, "socket")
    kind: str = "udp"
    expire: int = _default(UPSTREAM_SECTION, "expire")  # seconds
    check_interval: float = _default(UPSTREAM_SECTION, "check_interval")
    timeout: float = _default(UPSTREAM_SECTION, "timeout")
    retry_min: float = _default(UPSTREAM_SECTION, "retry_min")
    retry_max: float = _default(UPSTREAM_SECTION, "retry_max")


@dataclass
class Config:
    source: str
    base_dir: Path
    mi: MIConfig
    events: list
    transports: dict      # name -> {key: value}, in the order enabled
    expiry_interval: float = _default("expiry", "interval")
    script: Path | None = _default("script", "path")
    modules: dict = field(default_factory=dict)  # name -> {key: value}, in load order
    http: HTTPConfig = field(default_factory=HTTPConfig)
    store: StoreConfig = field(default_factory=StoreConfig)
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    shutdown_timeout: float = _default("shutdown", "timeout")  # seconds
    ingest: IngestConfig = field(default_factory=IngestConfig)
    upstreams: dict = field(default_factory=dict)  # name -> UpstreamConfig, in file order


# -- the parser ----------------------------------------------------------------

class _Reader:
    """
    Pops keys off a parsed ini so that whatever is left over is unknown.
    """

    def __init__(self, parser, source, base_dir):
        self.parser = parser
        self.source = source
        self.base_dir = base_dir
        self.unread = {s: set(parser[s]) for s in parser.sections()}

    def error(self, section, key, message):
        return ConfigError(self.source, section, key, message)

    def get(self, section, key, default, coerce=str):
        if not self.parser.has_section(section) or key not in self.parser[section]:
            text = default
        else:
            self.unread[section].discard(key)
            text = self.parser[section][key]
        if text is None:
            return None
        try:
            return coerce(text.strip())
        except ValueError as e:
            raise self.error(section, key, f"bad value {text.strip()!r}: {e}") from None

    def section(self, section, options) -> dict:
        """
        The coerced value of every key of C{options} (L{SCHEMA}'s or a
        plugin's: key -> C{(default, coerce, help)}) in C{section}.
        """
        return {key: self.get(section, key, default, coerce)
                for key, (default, coerce, _help) in options.items()}

    def path(self, text) -> Path:
        return (self.base_dir / Path(text).expanduser()).resolve()

    def check_unknown(self, known_sections):
        for section in self.parser.sections():
            if section not in known_sections:
                raise self.error(section, None, "unknown section (known: "
                                 f"{', '.join(sorted(known_sections))})")
            left = sorted(self.unread.get(section, ()))
            if left:
                raise self.error(section, left[0], "unknown key")


def _plugin_settings(r, parser, kind, names, factories, listed_in):
    """
    The coerced settings of the enabled plugins of one kind, checking the
    sections of known but disabled ones too.
    """
    chosen = {}
    for name in names:
        if name not in factories:
            raise r.error(*listed_in, f"unknown {kind} {name!r} (known: "
                          f"{', '.join(sorted(factories)) or 'none'})")
        if name in chosen:
            raise r.error(*listed_in, f"{kind} {name!r} listed twice")
        chosen[name] = r.section(f"{kind}:{name}", factories[name].options)
    for name, factory in factories.items():
        if name not in chosen and parser.has_section(f"{kind}:{name}"):
            r.section(f"{kind}:{name}", factory.options)
    return chosen


_UPSTREAM_NAME = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.-")
_UNSPECIFIED = ("0.0.0.0", "::", "")


def _ingest_and_upstreams(r, parser):
    """
    C{[ingest]} and every C{[upstream:NAME]}.

    @return: C{(IngestConfig, name -> UpstreamConfig, the upstream section names)}.
    """
    ingest = IngestConfig(**r.section("ingest", SCHEMA["ingest"]))
    ingest.unix = [r.path(p) for p in ingest.unix]
    for path in ingest.unix:
        if len(str(path).encode()) > 107:
            raise r.error("ingest", "unix", f"UNIX socket path longer than 107 bytes: {path}")
        if not path.parent.is_dir():
            raise r.error("ingest", "unix", f"directory {path.parent} does not exist")
    upstreams = {}
    sections = set()
    for section in parser.sections():
        if not section.startswith("upstream:"):
            continue
        name = section[len("upstream:"):]
        if not name or not set(name) <= _UPSTREAM_NAME:
            raise r.error(section, None, "an upstream name is letters, digits, '_', '.' and '-'")
        values = r.section(section, SCHEMA[UPSTREAM_SECTION])
        for key in ("mi", "events"):
            if values[key] is None:
                raise r.error(section, key, "required")
        upstream = UpstreamConfig(**values)
        if upstream.retry_min > upstream.retry_max:
            raise r.error(section, "retry_min", "must not be above retry_max")
        if upstream.socket:
            upstream.kind = upstream.socket.partition(":")[0]
            if not getattr(ingest, upstream.kind):
                raise r.error(section, "socket", f"no [ingest] {upstream.kind} listener to "
                                                 f"receive on")
            if upstream.socket == upstream.kind:
                upstream.socket = ""  # the first listener of that kind, as bound
        else:
            upstream.kind = next((k for k in ("udp", "tcp", "unix") if getattr(ingest, k)), None)
            if upstream.kind is None:
                raise r.error(section, "socket", "no [ingest] listener to subscribe")
        if not upstream.socket:
            first = getattr(ingest, upstream.kind)[0]
            if upstream.kind != "unix" and (first[0] in _UNSPECIFIED or ":" in first[0]):
                raise r.error(section, "socket", f"[ingest] {upstream.kind} listens on "
                                                 f"{first[0] or 'every address'}, which the "
                                                 f"proxy cannot send to: give the address it "
                                                 f"must use")
        for event in upstream.events:
            if not any(fnmatch.fnmatchcase(event, glob) for glob in ingest.events):
                raise r.error(section, "events", f"{event} would be refused by [ingest] "
                                                 f"events ({', '.join(ingest.events)})")
        upstreams[name] = upstream
        sections.add(section)
    return ingest, upstreams, sections


def parse_config(text: str, source: str, base_dir: Path, transport_factories: dict,
                 module_factories: dict | None = None) -> Config:
    """
    Check and convert ini text.

    @param transport_factories: name -> L{IEventTransportFactory} of every
        transport plugin found, for C{[transports] enabled} and the
        C{[transport:NAME]} keys.
    @raise ConfigError: anything wrong, in one line.
    """
    parser = configparser.ConfigParser(interpolation=None, inline_comment_prefixes=(";",),
                                       default_section="\0none")
    parser.optionxform = str  # keys are case-sensitive
    try:
        parser.read_string(text, source=source)
    except configparser.Error as e:
        raise ConfigError(source, None, None, " ".join(str(e).split())) from None
    r = _Reader(parser, source, base_dir)

    mi = MIConfig(**r.section("mi", SCHEMA["mi"]))
    mi.unix = [r.path(p) for p in mi.unix]
    listener_sections = set()
    for section in parser.sections():
        if section.startswith("mi:udp:"):
            try:
                address = _listen_address(section[len("mi:udp:"):])
            except ValueError as e:
                raise r.error(section, None, f"bad listener address: {e}") from None
            if address not in mi.udp:
                raise r.error(section, None, "no such listener in [mi] udp")
            mi.listener_allow[address] = r.section(section, SCHEMA[LISTENER_SECTION])["allow"]
            listener_sections.add(section)
    for path in mi.unix:
        if len(str(path).encode()) > 107:
            raise r.error("mi", "unix", f"UNIX socket path longer than 107 bytes: {path}")
        if not path.parent.is_dir():
            raise r.error("mi", "unix", f"directory {path.parent} does not exist")
    mi.fifo = [r.path(p) for p in mi.fifo]
    if len(set(mi.fifo)) != len(mi.fifo):
        raise r.error("mi", "fifo", "a FIFO path is listed twice")
    for path in mi.fifo:
        if not path.parent.is_dir():
            raise r.error("mi", "fifo", f"directory {path.parent} does not exist")
    mi.fifo_reply_dir = r.path(mi.fifo_reply_dir)
    if mi.fifo and not mi.fifo_reply_dir.is_dir():
        raise r.error("mi", "fifo_reply_dir", f"directory {mi.fifo_reply_dir} does not exist")
    http = HTTPConfig(**r.section("http", SCHEMA["http"]))
    if http.mi_path and http.mi_path == http.metrics_path:
        raise r.error("http", "metrics_path", "must differ from mi_path")
    if http.status_path and http.status_path in (http.mi_path, http.metrics_path):
        raise r.error("http", "status_path", "must differ from mi_path and metrics_path")
    events = r.section("events", SCHEMA["events"])["publish"]
    expiry_interval = r.section("expiry", SCHEMA["expiry"])["interval"]

    enabled = r.section("transports", SCHEMA["transports"])["enabled"]
    if enabled is None:
        enabled = builtin_transports(transport_factories)
    transports = _plugin_settings(r, parser, "transport", enabled, transport_factories,
                                  ("transports", "enabled"))
    module_factories = module_factories or {}
    modules = _plugin_settings(r, parser, "module", r.section("modules", SCHEMA["modules"])["load"],
                               module_factories, ("modules", "load"))
    script = r.section("script", SCHEMA["script"])["path"]
    if script is not None:
        script = r.path(script)
        if not script.is_file():
            raise r.error("script", "path", f"no such file: {script}")
    store = StoreConfig(**r.section("store", SCHEMA["store"]))
    store.directory = r.path(store.directory)
    policy = PolicyConfig(**r.section("policy", SCHEMA["policy"]))
    limits = LimitsConfig(**r.section("limits", SCHEMA["limits"]))
    shutdown_timeout = r.section("shutdown", SCHEMA["shutdown"])["timeout"]
    ingest, upstreams, upstream_sections = _ingest_and_upstreams(r, parser)
    known = set(SCHEMA) - {LISTENER_SECTION, UPSTREAM_SECTION} | listener_sections
    known |= upstream_sections
    known.update(f"transport:{name}" for name in transport_factories)
    known.update(f"module:{name}" for name in module_factories)
    r.check_unknown(known)
    return Config(source=source, base_dir=base_dir, mi=mi, events=events,
                  transports=transports, expiry_interval=expiry_interval, script=script,
                  modules=modules, http=http, store=store, policy=policy, limits=limits,
                  shutdown_timeout=shutdown_timeout, ingest=ingest, upstreams=upstreams)


def read_config(path, transport_factories: dict, module_factories: dict | None = None) -> Config:
    """
    Read an ini file, or the embedded default when C{path} is C{None}.

    @raise ConfigError: unreadable file or bad content.
    """
    if path is None:
        return parse_config(DEFAULT_INI, "<embedded default>", Path.cwd(), transport_factories,
                            module_factories)
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(path, None, None, f"cannot read: {getattr(e, 'strerror', None) or e}") from None
    return parse_config(text, str(path), path.resolve().parent, transport_factories,
                        module_factories)
