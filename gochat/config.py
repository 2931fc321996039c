"""Settings: command-line flags > environment > .env file > defaults.

This module resolves and validates every setting before anything starts, and remembers
where each value came from so an error can name both the setting and its source. It
does no I/O beyond reading the .env file (python-dotenv, which never overrides the
environment because we consult the environment first).
"""

from __future__ import annotations

import io
import ipaddress
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dotenv import dotenv_values
from dotenv.parser import parse_stream

from gochat import constants as C
from gochat.turn import TurnServer, parse_turn_url
from gochat.wire.constants import MAX_NAME_bytes

HostPort = tuple[str, int]


class ConfigError(ValueError):
    """A setting with an unusable value; the message names the setting and its source."""


# --- parsers: text -> value, raising ValueError with a short explanation -----------------

_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ms|s|m|h)")
_UNIT_s = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(text: str) -> float:
    """Seconds from '10', '2.5', '500ms', '10s', '1m30s' (Go-style units also accepted)."""
    text = text.strip()
    try:
        value = float(text)
    except ValueError:
        pos, value = 0, 0.0
        for m in _DURATION_PART.finditer(text):
            if m.start() != pos:
                break
            value += float(m.group(1)) * _UNIT_s[m.group(2)]
            pos = m.end()
        if pos != len(text) or not text:
            raise ValueError("expected a duration such as 10, 10s, 500ms or 1m30s") from None
    if not value > 0 or value != value or value == float("inf"):
        raise ValueError("must be a positive duration")
    return value


def parse_port(text: str, allow_zero: bool = False) -> int:
    try:
        port = int(str(text).strip())
    except ValueError:
        raise ValueError("expected a port number 1-65535") from None
    if not (0 if allow_zero else 1) <= port <= 65535:
        raise ValueError("port must be between 1 and 65535" + (" (or 0: any free port)" if allow_zero else ""))
    return port


def parse_listen(text: str) -> HostPort:
    """HOST:PORT to bind; port 0 asks the system for any free port."""
    return parse_host_port(text, allow_zero=True)


def parse_host_port(text: str, default_port: int | None = None, allow_zero: bool = False) -> HostPort:
    """'1.2.3.4:9595', '[::]:9595', 'example.org:9595', or a bare host when default_port."""
    text = text.strip()
    if not text:
        raise ValueError("expected HOST:PORT")
    if "://" in text:
        raise ValueError("expected HOST:PORT, not a URL (the bootnode speaks UDP), e.g. chat.example.org:9595")
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep:
            raise ValueError("unclosed '[' in IPv6 address")
        if rest and not rest.startswith(":"):
            raise ValueError("expected [IPv6]:PORT")
        port_text = rest[1:] if rest else None
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"{host!r} is not an IPv6 address") from None
    elif text.count(":") > 1:
        raise ValueError("write IPv6 addresses in brackets, e.g. [::1]:9595")
    else:
        host, sep, port_text = text.partition(":")
        port_text = port_text if sep else None
        if not host:
            raise ValueError("missing host before ':'")
        if not re.fullmatch(r"[A-Za-z0-9.\-_]+", host):
            raise ValueError(f"{host!r} is not a host name or address")
    if port_text is None:
        if default_port is None:
            raise ValueError("expected HOST:PORT (the port is missing)")
        return host, default_port
    return host, parse_port(port_text, allow_zero)


def parse_positive_int(text: str) -> int:
    try:
        value = int(str(text).strip().replace("_", ""))
    except ValueError:
        raise ValueError("expected a whole number") from None
    if value <= 0:
        raise ValueError("must be greater than zero")
    return value


def parse_positive_float(text: str) -> float:
    try:
        value = float(str(text).strip())
    except ValueError:
        raise ValueError("expected a number") from None
    if not value > 0 or value == float("inf"):
        raise ValueError("must be greater than zero")
    return value


def parse_choice(*choices: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        value = text.strip().lower()
        if value not in choices:
            raise ValueError(f"must be one of: {', '.join(choices)}")
        return value

    return parse


def parse_optional_host_port(text: str) -> HostPort | None:
    return parse_listen(text) if text.strip() else None


def parse_text(text: str) -> str:
    return text.strip()


MAX_WORKERS = 64
_NATS_URL = re.compile(r"^nats://(\[[0-9A-Fa-f:.]+\]|[^\s/:\[\]@]+):(\d{1,5})$")


def parse_cluster(text: str) -> tuple[str, ...]:
    """NATS servers of the cluster bus: nats://HOST:PORT, comma-separated."""
    urls = tuple(u.strip() for u in text.split(",") if u.strip())
    for url in urls:
        m = _NATS_URL.match(url)
        if m is None or not 0 < int(m.group(2)) < 65536:
            raise ValueError(f"not a NATS server URL (nats://HOST:PORT): {url!r}")
    return urls


def parse_workers(text: str) -> int:
    value = text.strip().lower()
    if value == "auto":
        return max(1, min(MAX_WORKERS, os.cpu_count() or 1))
    try:
        n = int(value)
    except ValueError:
        raise ValueError("a number of processes, or auto") from None
    if not 1 <= n <= MAX_WORKERS:
        raise ValueError(f"between 1 and {MAX_WORKERS}")
    return n


def parse_optional_turn_url(text: str) -> TurnServer | None:
    return parse_turn_url(text) if text.strip() else None


def parse_bool(text: str) -> bool:
    value = text.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off", ""):
        return False
    raise ValueError("expected true or false")


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def parse_duration_or_zero(text: str) -> float:
    """A duration, or 0 (off)."""
    if text.strip() in ("0", "0s", "0ms", "off"):
        return 0.0
    return parse_duration(text)


def parse_discovery_port(text: str) -> int | str:
    """``auto``, ``off`` or a port number (1..65535)."""
    word = text.strip().lower()
    if word in ("auto", "off"):
        return word
    try:
        return parse_port(word)
    except ValueError:
        raise ValueError("expected auto, off or a port number") from None


def parse_name(text: str) -> str:
    """A display name as the wire carries it: 1-32 UTF-8 bytes, no control characters."""
    name = text.strip()
    if not name:
        raise ValueError("must not be empty")
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:  # bytes that were not UTF-8 on the command line
        raise ValueError("must be UTF-8 text") from None
    if len(name.encode("utf-8")) > MAX_NAME_bytes:
        raise ValueError(f"at most {MAX_NAME_bytes} bytes of UTF-8")
    if _CONTROL.search(name):
        raise ValueError("must not contain control characters")
    return name


def parse_path(text: str) -> Path | None:
    return Path(text).expanduser() if text.strip() else None


def parse_public_key(text: str) -> bytes | None:
    """A 32-byte X25519 public key written as 64 hex digits; empty: none."""
    text = text.strip()
    if not text:
        return None
    try:
        key = bytes.fromhex(text)
    except ValueError:
        raise ValueError("expected 64 hex digits (the key the bootnode logs at start)") from None
    if len(key) != 32:
        raise ValueError(f"expected 64 hex digits (32 bytes), got {len(key)} bytes")
    return key


def default_name(environ: Mapping[str, str]) -> str:
    """The login name, made a valid display name."""
    login = environ.get("USER") or environ.get("LOGNAME") or "user"
    login = _CONTROL.sub("", login).strip() or "user"
    while len(login.encode("utf-8")) > MAX_NAME_bytes:
        login = login[:-1]
    return login


def distinct_default_name(login_name: str, fingerprint: str) -> str:
    """The name of a client that chose none: the login name and the first group of its
    fingerprint (``user-3ab6``), so that two people who did not set one, or two
    containers of the same image, do not look alike."""
    suffix = "-" + fingerprint[:4]
    while len((login_name + suffix).encode("utf-8")) > MAX_NAME_bytes:
        login_name = login_name[:-1]
    return login_name + suffix


# --- the settings table ------------------------------------------------------------------


@dataclass(frozen=True)
class Spec:
    field: str
    env: str
    flag: str | None
    default: str | None
    parse: Callable[[str], Any]
    help: str


SPECS: tuple[Spec, ...] = (
    Spec(
        "mode",
        "MODE",
        "--mode",
        "client",
        parse_choice("bootnode", "client", "demo"),
        "bootnode (rendezvous server), client, or demo (bootnode, echo bot and you, in one process)",
    ),
    Spec(
        "listen",
        "LISTEN",
        "--listen",
        C.DEFAULT_LISTEN,
        parse_listen,
        "bootnode: UDP address to listen on, HOST:PORT ([::]:9595 for IPv6)",
    ),
    Spec(
        "bootnode_udp_port",
        "BOOTNODE_UDP_PORT",
        None,
        str(C.DEFAULT_BOOTNODE_UDP_PORT),
        parse_port,
        "client: bootnode port used when BOOTNODE has none",
    ),
    Spec("bootnode", "BOOTNODE", "--bootnode", None, parse_text, "client: bootnode address, HOST[:PORT]"),
    Spec(
        "bootnode_public_key",
        "BOOTNODE_PUBLIC_KEY",
        "--bootnode-public-key",
        "",
        parse_public_key,
        "client: the bootnode's public key (hex, as it logs it at start) to pin instead of trusting the first one seen",
    ),
    Spec("room", "ROOM", "--room", None, parse_text, "client: room to join"),
    Spec(
        "port",
        "LOCAL_UDP_PORT",
        "--port",
        str(C.DEFAULT_LOCAL_UDP_PORT),
        lambda text: parse_port(text, allow_zero=True),
        "client: local UDP port (0: any free port)",
    ),
    Spec("name", "NAME", "--name", None, parse_name, "client: display name (default: the login name)"),
    Spec(
        "identity",
        "IDENTITY_FILE",
        "--identity",
        "",
        parse_path,
        "client: identity key file (default: $XDG_DATA_HOME/gochat/identity)",
    ),
    Spec(
        "passphrase",
        "ROOM_PASSPHRASE",
        "--passphrase",
        "",
        parse_text,
        "client: room passphrase; peers need the same one (prefer the environment: flags show in ps)",
    ),
    Spec("no_ui", "NO_UI", None, "false", parse_bool, "client: line mode, JSON events on stdout"),
    Spec("no_history", "NO_HISTORY", None, "false", parse_bool, "client UI: keep no conversation on disk"),
    Spec(
        "register_timeout",
        "REGISTER_TIMEOUT",
        "--register-timeout",
        f"{C.DEFAULT_REGISTER_TIMEOUT_s:g}s",
        parse_duration,
        "client: how long the first registration keeps trying before the client gives up",
    ),
    Spec(
        "heartbeat_interval",
        "HEARTBEAT_INTERVAL",
        "--heartbeat-interval",
        f"{C.DEFAULT_HEARTBEAT_INTERVAL_s:g}s",
        parse_duration,
        "how often clients send heartbeats (the bootnode tells clients its value)",
    ),
    Spec(
        "peer_timeout",
        "PEER_TIMEOUT",
        "--peer-timeout",
        f"{C.DEFAULT_PEER_TIMEOUT_s:g}s",
        parse_duration,
        "silence after which a peer is dropped and announced as left",
    ),
    Spec(
        "max_peers",
        "MAX_PEERS",
        "--max-peers",
        str(C.DEFAULT_MAX_PEERS),
        parse_positive_int,
        "bootnode: registrations held in total",
    ),
    Spec(
        "max_peers_per_room",
        "MAX_PEERS_PER_ROOM",
        "--max-peers-per-room",
        str(C.DEFAULT_MAX_PEERS_PER_ROOM),
        parse_positive_int,
        "bootnode: registrations per room",
    ),
    Spec(
        "max_peers_per_source",
        "MAX_PEERS_PER_SOURCE",
        "--max-peers-per-source",
        str(C.DEFAULT_MAX_PEERS_PER_SOURCE),
        parse_positive_int,
        "bootnode: registrations one source IP may hold in one room",
    ),
    Spec(
        "register_rate",
        "REGISTER_RATE_PER_IP",
        "--register-rate",
        f"{C.DEFAULT_REGISTER_RATE_PER_IP:g}",
        parse_positive_float,
        "bootnode: registrations per second allowed from one source IP",
    ),
    Spec(
        "register_burst",
        "REGISTER_BURST_PER_IP",
        "--register-burst",
        str(C.DEFAULT_REGISTER_BURST_PER_IP),
        parse_positive_int,
        "bootnode: burst of registrations allowed from one source IP",
    ),
    Spec(
        "bootnode_key",
        "BOOTNODE_KEY_FILE",
        "--bootnode-key",
        "",
        parse_path,
        "bootnode: its static key file, created on first start (default: $XDG_DATA_HOME/gochat/bootnode.key)",
    ),
    Spec(
        "recv_buffer",
        "RECV_BUFFER_BYTES",
        "--recv-buffer",
        str(C.DEFAULT_RECV_BUFFER_bytes),
        parse_positive_int,
        "bootnode: socket receive buffer (SO_RCVBUF) in bytes",
    ),
    Spec(
        "metrics_listen",
        "METRICS_LISTEN",
        "--metrics-listen",
        "",
        parse_optional_host_port,
        "bootnode: serve Prometheus metrics over HTTP on HOST:PORT (empty: off)",
    ),
    Spec(
        "batch_wait",
        "BATCH_WAIT",
        "--batch-wait",
        f"{C.DEFAULT_BATCH_WAIT_s * 1000:g}ms",
        parse_duration_or_zero,
        "bootnode: after a short receive batch, let datagrams gather this long (0: off)",
    ),
    Spec(
        "cluster",
        "CLUSTER",
        "--cluster",
        "",
        parse_cluster,
        "bootnode: join other bootnodes through NATS, nats://HOST:PORT[,nats://HOST:PORT...] (empty: alone)",
    ),
    Spec(
        "workers",
        "WORKERS",
        "--workers",
        "1",
        parse_workers,
        "bootnode: processes serving the port (SO_REUSEPORT, steered by room and token): a number, or auto",
    ),
    Spec(
        "discovery_port",
        "DISCOVERY_PORT",
        "--discovery-port",
        "auto",
        parse_discovery_port,
        "bootnode: a second UDP port answering STUN for NAT discovery: auto (listen port + 1), off, or a port",
    ),
    Spec(
        "relay",
        "RELAY",
        "--relay",
        "on",
        parse_choice("on", "off"),
        "bootnode: forward peers' encrypted datagrams when they cannot punch; client: use that relay",
    ),
    Spec(
        "relay_rate",
        "RELAY_RATE",
        "--relay-rate",
        str(C.DEFAULT_RELAY_RATE_bytes),
        parse_positive_int,
        "bootnode: bytes per second one relay binding may relay",
    ),
    Spec(
        "relay_burst",
        "RELAY_BURST",
        "--relay-burst",
        str(C.DEFAULT_RELAY_BURST_bytes),
        parse_positive_int,
        "bootnode: bytes one relay binding may relay at once",
    ),
    Spec(
        "relay_total_rate",
        "RELAY_TOTAL_RATE",
        "--relay-total-rate",
        str(C.DEFAULT_RELAY_TOTAL_RATE_bytes),
        parse_positive_int,
        "bootnode: bytes per second relayed for all bindings together",
    ),
    Spec(
        "relay_bindings_per_ip",
        "RELAY_BINDINGS_PER_IP",
        "--relay-bindings-per-ip",
        str(C.DEFAULT_RELAY_BINDINGS_PER_IP),
        parse_positive_int,
        "bootnode: relay bindings one source IP may hold",
    ),
    Spec(
        "relay_max_bindings",
        "RELAY_MAX_BINDINGS",
        "--relay-max-bindings",
        str(C.DEFAULT_RELAY_MAX_BINDINGS),
        parse_positive_int,
        "bootnode: relay bindings held in total",
    ),
    Spec(
        "turn_url",
        "TURN_URL",
        "--turn-url",
        "",
        parse_optional_turn_url,
        "a TURN server, turn:HOST[:PORT] (client: relay through it; bootnode: hand its clients credentials for it)",
    ),
    Spec(
        "turn_username",
        "TURN_USERNAME",
        "--turn-username",
        "",
        parse_text,
        "client: TURN username (empty: credentials from the bootnode, if it mints them)",
    ),
    Spec(
        "turn_password",
        "TURN_PASSWORD",
        "--turn-password",
        "",
        parse_text,
        "client: TURN password (prefer the environment: flags show in ps)",
    ),
    Spec(
        "turn_secret",
        "TURN_SECRET",
        "--turn-secret",
        "",
        parse_text,
        "bootnode: the secret shared with the TURN server (coturn static-auth-secret) to mint clients' credentials",
    ),
    Spec(
        "bell",
        "BELL",
        "--bell",
        "on",
        parse_choice("on", "off"),
        "client UI: ring the terminal bell when a message names you or is sent to you alone",
    ),
    Spec(
        "log_level",
        "LOG_LEVEL",
        "--log-level",
        "info",
        parse_choice("debug", "info", "warning", "error"),
        "log verbosity",
    ),
    Spec(
        "log_format",
        "LOG_FORMAT",
        "--log-format",
        "text",
        parse_choice("text", "json"),
        "log lines as text, or as one JSON object each (for log collectors)",
    ),
    Spec(
        "log_summary_interval",
        "LOG_SUMMARY_INTERVAL",
        "--log-summary-interval",
        f"{C.DEFAULT_LOG_SUMMARY_INTERVAL_s:g}s",
        parse_duration,
        "bootnode: how often it logs what it did (registrations, refusals, malformed datagrams...)",
    ),
)

SPEC_BY_FIELD = {s.field: s for s in SPECS}


@dataclass(frozen=True)
class Settings:
    mode: str
    listen: HostPort
    bootnode_udp_port: int
    bootnode: HostPort | None
    bootnodes: tuple[HostPort, ...]  # every bootnode of BOOTNODE (a list: a:9595,b:9595); bootnode is the first
    bootnode_public_key: bytes | None
    room: str | None
    port: int
    name: str  # the login name when none was set
    identity: Path | None
    passphrase: str
    no_ui: bool
    no_history: bool
    register_timeout: float
    heartbeat_interval: float
    peer_timeout: float
    max_peers: int
    max_peers_per_room: int
    max_peers_per_source: int
    register_rate: float
    register_burst: int
    bootnode_key: Path | None
    recv_buffer: int
    metrics_listen: HostPort | None
    batch_wait: float
    cluster: tuple[str, ...]
    workers: int
    discovery_port: int | str
    relay: str
    relay_rate: int
    relay_burst: int
    relay_total_rate: int
    relay_bindings_per_ip: int
    relay_max_bindings: int
    turn_url: TurnServer | None
    turn_username: str
    turn_password: str
    turn_secret: str
    bell: str
    log_level: str
    log_format: str
    log_summary_interval: float
    sources: dict[str, str]


def _describe(spec: Spec, source: str) -> str:
    if source == "flag" and spec.flag:
        return f"{spec.flag} (command line)"
    if source == "environment":
        return f"{spec.env} (environment)"
    if source == "default":
        return f"{spec.env} (default)"
    return f"{spec.env} ({source})"  # the .env file


def _shown(raw: str, limit: int = 60) -> str:
    """A bad value as an error message quotes it: whole if short, else its start."""
    text = raw.encode("utf-8", "backslashreplace").decode("utf-8")  # lone surrogates from argv
    return repr(text) if len(text) <= limit else f"{text[:limit]!r}... ({len(raw)} characters)"


def _read_env_file(env_file: Path, required: bool) -> dict[str, str | None]:
    """The .env file's values; a missing file is no file unless it was asked for by name."""
    if env_file.is_dir():
        raise ConfigError(f"--env-file {env_file}: is a directory")
    if not env_file.exists():
        if required:
            raise ConfigError(f"--env-file {env_file}: no such file")
        return {}
    try:
        text = env_file.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"file {env_file}: not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at offset {exc.start})"
        ) from None
    except OSError as exc:
        raise ConfigError(f"file {env_file}: {exc.strerror or exc}") from None
    for binding in parse_stream(io.StringIO(text)):
        if binding.error:  # python-dotenv would only log it, and go on without the line
            raise ConfigError(f"file {env_file}, line {binding.original.line}: expected NAME=VALUE")
    return dotenv_values(stream=io.StringIO(text))


def resolve(
    flags: Mapping[str, Any], environ: Mapping[str, str], env_file: Path | None, env_file_required: bool = False
) -> Settings:
    """Resolve every setting by precedence and validate it; raise ConfigError on the first
    bad one. ``flags`` maps field names to command-line values (None when not given). An
    empty value in the environment or the .env file means unset (as `.env.example` ships
    them), so the next source decides."""
    dotenv = _read_env_file(env_file, env_file_required) if env_file is not None else {}
    env_file_label = f"file {env_file}"
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for spec in SPECS:
        raw: str | None
        if flags.get(spec.field) is not None:
            raw, source = str(flags[spec.field]), "flag"
        elif environ.get(spec.env, "").strip():
            raw, source = environ[spec.env], "environment"
        elif (dotenv.get(spec.env) or "").strip():
            raw, source = dotenv[spec.env], env_file_label
        else:
            raw, source = spec.default, "default"
        sources[spec.field] = _describe(spec, source)
        if raw is None:
            values[spec.field] = None
            continue
        try:
            values[spec.field] = spec.parse(raw)
        except ValueError as exc:
            raise ConfigError(f"invalid {sources[spec.field]}: {_shown(raw)}: {exc}") from None

    if values["name"] is None:
        values["name"] = default_name(environ)
        sources["name"] = "NAME (default: the login name)"
    if values["mode"] == "client":
        if not values["room"]:
            raise ConfigError("client mode needs a room: set --room or ROOM")
        if not values["bootnode"]:
            raise ConfigError("client mode needs a bootnode: set --bootnode or BOOTNODE (HOST[:PORT])")
    values["bootnodes"] = ()
    if values["bootnode"]:
        try:
            # a list, a:9595,b:9595: several bootnodes serving the same rooms (see the client driver)
            values["bootnodes"] = tuple(
                dict.fromkeys(
                    parse_host_port(part, values["bootnode_udp_port"]) for part in values["bootnode"].split(",")
                )
            )
        except ValueError as exc:
            raise ConfigError(f"invalid {sources['bootnode']}: {_shown(values['bootnode'])}: {exc}") from None
        values["bootnode"] = values["bootnodes"][0]
        if len(values["bootnodes"]) > 1 and values["bootnode_public_key"] is not None:
            raise ConfigError(
                f"{sources['bootnode_public_key']} pins one bootnode, but {sources['bootnode']} names "
                f"{len(values['bootnodes'])}: leave it unset (each key is pinned on first use in known_bootnodes.json)"
            )
    else:
        values["bootnode"] = None
    if values["heartbeat_interval"] >= values["peer_timeout"]:
        raise ConfigError(
            f"heartbeat interval ({values['heartbeat_interval']:g}s, from {sources['heartbeat_interval']}) "
            f"must be below the peer timeout ({values['peer_timeout']:g}s, from {sources['peer_timeout']})"
        )
    if values["peer_timeout"] > 86400:
        raise ConfigError(f"invalid {sources['peer_timeout']}: at most one day (86400s)")
    if values["mode"] == "bootnode" and values["turn_secret"] and values["turn_url"] is None:
        raise ConfigError(
            f"{sources['turn_secret']} needs the TURN server it is shared with: set --turn-url or TURN_URL"
        )
    if bool(values["turn_username"]) != bool(values["turn_password"]):
        raise ConfigError(
            f"{sources['turn_username']} and {sources['turn_password']} go together (or leave both empty "
            "to take credentials from the bootnode)"
        )
    return Settings(sources=sources, **values)
