# -*- test-case-name: tests.test_config -*-
"""
The ini file, read and checked apart from building anything: unknown
sections or keys, bad values and unreadable files are L{ConfigError}s that
name the file, section and key in one line.

Relative paths are taken from the ini file's directory (from the working
directory for the embedded default).
"""

import configparser
import grp
import pwd
from dataclasses import dataclass, field
from pathlib import Path

from twisted.internet.abstract import isIPAddress, isIPv6Address

from evsrv.util.coercers import seconds as _seconds
from evsrv.evi.events import MAX_EVENT_NAME
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


@dataclass
class MIConfig:
    udp: list = field(default_factory=list)    # [(host, port)]
    unix: list = field(default_factory=list)   # [Path]
    unix_mode: int = 0o660
    unix_owner: str | None = None   # user name; None: the server's
    unix_group: str | None = None   # group name; None: the server's
    max_datagram: int = 65457
    request_timeout: float = 10.0  # seconds before a pending command is answered "timed out"
    # sources allowed on every UDP listener, and per-listener overrides
    # from [mi:udp:HOST:PORT] allow
    allow: NetworkList = field(default_factory=lambda: NetworkList.parse(LOOPBACK))
    listener_allow: dict = field(default_factory=dict)  # (host, port) -> NetworkList

    def allow_for(self, address) -> NetworkList:
        return self.listener_allow.get(address, self.allow)


@dataclass
class StoreConfig:
    backend: str = "sqlite"       # "sqlite" or "none"
    directory: Path | None = None  # the state directory (made at start-up)
    sync: str = "full"            # SQLite synchronous: "full" (power-loss safe) or "normal"
    batch_delay: float = 0.01     # seconds a change waits for others to share its disk sync

    @property
    def path(self) -> Path | None:
        if self.backend == "none" or self.directory is None:
            return None
        return self.directory / "subscriptions.sqlite"


@dataclass
class PolicyConfig:
    allow_destinations: NetworkList = field(default_factory=lambda: NetworkList.parse("any"))
    deny_destinations: NetworkList = field(
        default_factory=lambda: NetworkList.parse(DEFAULT_DENIED_DESTINATIONS))


@dataclass
class LimitsConfig:
    # 0 means no limit
    max_subscriptions: int = 250000
    max_subscriptions_per_event: int = 100000
    max_params_bytes: int = 1048576  # of parameter names and values in one raise


@dataclass
class HTTPConfig:
    listen: tuple | None = None   # (host, port); None: no HTTP site
    mi_path: str = "/mi"          # "": no MI over HTTP
    metrics_path: str = "/metrics"  # "": no metrics
    max_request: int = 1048576    # bytes of request body; larger: 413
    idle_timeout: float = 60.0    # seconds a connection may stay silent; a body's deadline
    # seconds from a connection's start (keep-alive: from the next request's
    # first byte) to the end of its request line and headers
    header_timeout: float = 10.0
    status_path: str = "/status"  # "": no status page
    status_recent: int = 20       # raised events the status page lists
    allow: NetworkList = field(default_factory=lambda: NetworkList.parse(LOOPBACK))


@dataclass
class Config:
    source: str
    base_dir: Path
    mi: MIConfig
    events: list
    transports: dict      # name -> {key: value}, in the order enabled
    expiry_interval: float = 1.0
    script: Path | None = None
    modules: dict = field(default_factory=dict)  # name -> {key: value}, in load order
    http: HTTPConfig = field(default_factory=HTTPConfig)
    store: StoreConfig = field(default_factory=StoreConfig)
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    shutdown_timeout: float = 10.0  # seconds to flush queued notifications at exit


def _udp_address(text: str) -> tuple:
    # a listener binds an address: an IP literal
    return parse_host_port(text, names=False)


def _list(text: str) -> list:
    return [item.strip() for item in text.replace("\n", ",").split(",") if item.strip()]


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise ValueError("must be a positive number")
    return value


def _octal(text: str) -> int:
    value = int(text, 8)
    if not 0 <= value <= 0o777:
        raise ValueError("must be an octal file mode such as 0660")
    return value


def _datagram_size(text: str) -> int:
    value = int(text)
    if not 512 <= value <= 65507:
        raise ValueError("must be between 512 and 65507")
    return value


def _url_path(text: str) -> str:
    if text and (not text.startswith("/") or not text.isascii() or not text.isprintable()
                 or any(c in text for c in " ?#")):
        raise ValueError("must be empty (off) or a URL path such as /mi")
    return text


def _status_recent(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 1000:
        raise ValueError("must be between 0 and 1000")
    return value


def _request_size(text: str) -> int:
    value = int(text)
    if not 1024 <= value <= 1 << 30:
        raise ValueError("must be between 1024 and 1073741824 bytes")
    return value


def _user(text: str) -> str | None:
    if not text:
        return None
    try:
        pwd.getpwnam(text)
    except KeyError:
        raise ValueError(f"no such user {text!r}") from None
    return text


def _group(text: str) -> str | None:
    if not text:
        return None
    try:
        grp.getgrnam(text)
    except KeyError:
        raise ValueError(f"no such group {text!r}") from None
    return text


def _choice(*choices):
    def coerce(text):
        if text not in choices:
            raise ValueError(f"must be one of {', '.join(choices)}")
        return text
    return coerce


def _batch_delay(text: str) -> float:
    value = float(text)
    if not 0 <= value <= 1:
        raise ValueError("must be between 0 and 1 second (MI clients wait 0.1 s for answers)")
    return value


def _limit(text: str) -> int:
    value = int(text)
    if value < 0:
        raise ValueError("must be 0 (no limit) or more")
    return value


def _event_name(text: str) -> str:
    if len(text.encode()) > MAX_EVENT_NAME or not text.replace("_", "a").isalnum():
        raise ValueError(f"bad event name {text!r} (letters, digits and _, "
                         f"at most {MAX_EVENT_NAME} bytes)")
    return text


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

    def path(self, text: str) -> Path:
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
        section = f"{kind}:{name}"
        chosen[name] = {key: r.get(section, key, default, coerce)
                        for key, (default, coerce, _help) in factories[name].options.items()}
    for name, factory in factories.items():
        if name not in chosen and parser.has_section(f"{kind}:{name}"):
            for key, (default, coerce, _help) in factory.options.items():
                r.get(f"{kind}:{name}", key, default, coerce)
    return chosen


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

    def addresses(text):
        return [_udp_address(a) for a in _list(text)]

    mi = MIConfig(
        udp=r.get("mi", "udp", "", addresses),
        unix=[r.path(p) for p in r.get("mi", "unix", "", _list)],
        unix_mode=r.get("mi", "unix_mode", "0660", _octal),
        unix_owner=r.get("mi", "unix_owner", "", _user),
        unix_group=r.get("mi", "unix_group", "", _group),
        max_datagram=r.get("mi", "max_datagram", "65457", _datagram_size),
        request_timeout=r.get("mi", "request_timeout", "10", _positive_float),
        allow=r.get("mi", "allow", LOOPBACK, NetworkList.parse),
    )
    listener_sections = set()
    for section in parser.sections():
        if section.startswith("mi:udp:"):
            try:
                address = _udp_address(section[len("mi:udp:"):])
            except ValueError as e:
                raise r.error(section, None, f"bad listener address: {e}") from None
            if address not in mi.udp:
                raise r.error(section, None, "no such listener in [mi] udp")
            mi.listener_allow[address] = r.get(section, "allow", LOOPBACK, NetworkList.parse)
            listener_sections.add(section)
    for path in mi.unix:
        if len(str(path).encode()) > 107:
            raise r.error("mi", "unix", f"UNIX socket path longer than 107 bytes: {path}")
        if not path.parent.is_dir():
            raise r.error("mi", "unix", f"directory {path.parent} does not exist")
    http = HTTPConfig(
        # off unless the ini says so; the embedded default turns it on
        listen=r.get("http", "listen", "", lambda t: _udp_address(t) if t else None),
        mi_path=r.get("http", "mi_path", "/mi", _url_path),
        metrics_path=r.get("http", "metrics_path", "/metrics", _url_path),
        max_request=r.get("http", "max_request", "1048576", _request_size),
        idle_timeout=r.get("http", "idle_timeout", "60", _positive_float),
        header_timeout=r.get("http", "header_timeout", "10", _positive_float),
        status_path=r.get("http", "status_path", "/status", _url_path),
        status_recent=r.get("http", "status_recent", "20", _status_recent),
        allow=r.get("http", "allow", LOOPBACK, NetworkList.parse),
    )
    if http.mi_path and http.mi_path == http.metrics_path:
        raise r.error("http", "metrics_path", "must differ from mi_path")
    if http.status_path and http.status_path in (http.mi_path, http.metrics_path):
        raise r.error("http", "status_path", "must differ from mi_path and metrics_path")
    events = r.get("events", "publish", "", lambda t: [_event_name(e) for e in _list(t)])
    expiry_interval = r.get("expiry", "interval", "1.0", _positive_float)

    enabled = r.get("transports", "enabled", ", ".join(builtin_transports(transport_factories)),
                    _list)
    transports = _plugin_settings(r, parser, "transport", enabled, transport_factories,
                                  ("transports", "enabled"))
    module_factories = module_factories or {}
    modules = _plugin_settings(r, parser, "module", r.get("modules", "load", "", _list),
                               module_factories, ("modules", "load"))
    script = r.get("script", "path", "", lambda t: r.path(t) if t else None)
    if script is not None and not script.is_file():
        raise r.error("script", "path", f"no such file: {script}")
    store = StoreConfig(
        backend=r.get("store", "backend", "sqlite", _choice("sqlite", "none")),
        directory=r.get("store", "directory", "var", r.path),
        sync=r.get("store", "sync", "full", _choice("full", "normal")),
        batch_delay=r.get("store", "batch_delay", "0.01", _batch_delay),
    )
    policy = PolicyConfig(
        allow_destinations=r.get("policy", "allow_destinations", "any", NetworkList.parse),
        deny_destinations=r.get("policy", "deny_destinations", DEFAULT_DENIED_DESTINATIONS,
                                NetworkList.parse),
    )
    limits = LimitsConfig(
        max_subscriptions=r.get("limits", "max_subscriptions", "250000", _limit),
        max_subscriptions_per_event=r.get("limits", "max_subscriptions_per_event", "100000",
                                          _limit),
        max_params_bytes=r.get("limits", "max_params_bytes", "1048576", _limit),
    )
    shutdown_timeout = r.get("shutdown", "timeout", "10", _seconds)
    known = {"mi", "http", "events", "expiry", "transports", "modules", "script", "store",
             "policy", "limits", "shutdown"} | listener_sections
    known.update(f"transport:{name}" for name in transport_factories)
    known.update(f"module:{name}" for name in module_factories)
    r.check_unknown(known)
    return Config(source=source, base_dir=base_dir, mi=mi, events=events,
                  transports=transports, expiry_interval=expiry_interval, script=script,
                  modules=modules, http=http, store=store, policy=policy, limits=limits,
                  shutdown_timeout=shutdown_timeout)


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
