"""The ``gochat`` command: settings first (refused up front, exit 2), then the mode."""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click
from click.core import ParameterSource

from gochat.config import SPECS, ConfigError, Settings, distinct_default_name, resolve
from gochat.logs import log_to_file, log_to_stderr

from . import __version__

if TYPE_CHECKING:
    from gochat.crypto.identity import Identity

F = TypeVar("F", bound=Callable[..., Any])


def _options(func: F) -> F:
    for spec in reversed(SPECS):
        if spec.flag is None:
            continue
        func = click.option(
            spec.flag,
            spec.field,
            default=None,
            metavar="VALUE",
            help=f"{spec.help} [env {spec.env}; default {spec.default or 'none'}]",
        )(func)
    return func


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@_options
@click.option(
    "--env-file",
    "env_file",
    default=".env",
    show_default=True,
    metavar="PATH",
    help="settings file read after the environment (never overrides it)",
)
@click.option(
    "--no-ui",
    "no_ui",
    is_flag=True,
    default=None,
    help="client: line mode for scripts: stdin lines are messages, stdout JSON events [env NO_UI]",
)
@click.option(
    "--no-history",
    "no_history",
    is_flag=True,
    default=None,
    help="client UI: keep no conversation on disk (each room's is kept by default) [env NO_HISTORY]",
)
@click.version_option(__version__, "--version", prog_name="gochat")
def main(env_file: str, **flags: Any) -> None:
    """Peer-to-peer group chat over UDP: a bootnode introduces the peers of a room."""
    try:
        for flag in ("no_ui", "no_history"):
            if flags.get(flag):
                flags[flag] = "true"
        named = click.get_current_context().get_parameter_source("env_file") is not ParameterSource.DEFAULT
        settings = resolve(flags, os.environ, Path(env_file) if env_file else None, env_file_required=named)
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from None
    log_to_stderr(settings.log_level, settings.log_format)
    if settings.mode == "bootnode":
        sys.exit(run_bootnode(settings))
    sys.exit(run_client(settings))  # client and demo


def run_client(settings: Settings) -> int:
    """Client and demo modes: the terminal UI, or line mode with --no-ui (or without a terminal)."""
    from gochat.client.driver import ClientConfig, StartupError
    from gochat.crypto.identity import IdentityError, data_dir, load_or_create
    from gochat.frontends.linemode import LineMode

    path = settings.identity or data_dir(os.environ) / "identity"
    try:
        identity = load_or_create(path)
    except (IdentityError, OSError) as exc:
        click.echo(f"gochat: identity {path}: {exc}", err=True)
        return 1
    name_chosen = not settings.sources["name"].startswith("NAME (default")
    name = settings.name if name_chosen else distinct_default_name(settings.name, identity.fingerprint)
    use_ui = not settings.no_ui
    if use_ui and not (sys.stdin.isatty() and sys.stdout.isatty()):
        click.echo("gochat: not a terminal: running in line mode (--no-ui)", err=True)
        use_ui = False
    if use_ui:
        log_to_file(identity.path.parent / "gochat.log", settings.log_level, settings.log_format)

    async def front_end(config: ClientConfig, identity: Identity) -> int:
        if use_ui:
            from gochat.frontends.ui import ChatApp

            return await ChatApp(config, identity).run()
        return await LineMode(config, identity, sys.stdin.fileno(), sys.stdout).run()

    async def main() -> int:
        if settings.mode == "demo":
            from gochat.frontends.demo import run_demo

            return await run_demo(identity, name, front_end)
        assert settings.bootnode is not None and settings.room is not None
        return await front_end(
            ClientConfig(
                bootnode=settings.bootnode,
                more_bootnodes=settings.bootnodes[1:],
                room=settings.room,
                name=name,
                name_chosen=name_chosen,
                bell=settings.bell == "on",
                history=not settings.no_history,
                port=settings.port,
                passphrase=settings.passphrase or None,
                peer_timeout=settings.peer_timeout,
                bootnode_public_key=settings.bootnode_public_key,
                register_timeout=settings.register_timeout,
                relay=settings.relay == "on",
                turn=settings.turn_url,
                turn_credentials=(settings.turn_username, settings.turn_password) if settings.turn_username else None,
            ),
            identity,
        )

    try:
        return asyncio.run(main())
    except (StartupError, IdentityError) as exc:
        click.echo(f"gochat: {exc}", err=True)
        return 1


def _discovery_port(settings: Settings) -> int:
    """DISCOVERY_PORT as the driver takes it: -1 off, 0 any free port, else the port."""
    if settings.discovery_port == "off":
        return -1
    if settings.discovery_port == "auto":
        port = settings.listen[1]
        return 0 if port in (0, 65535) else port + 1
    return int(settings.discovery_port)


def run_bootnode(settings: Settings) -> int:
    from gochat.bootnode.driver import BootnodeConfig, serve
    from gochat.bootnode.keys import BootnodeKeyError, default_key_path, load_or_create
    from gochat.bootnode.rendezvous import Limits, TurnIssuer

    key_file = settings.bootnode_key or default_key_path(os.environ)
    try:  # refused up front, before the socket is bound
        key, created = load_or_create(key_file)
    except BootnodeKeyError as exc:
        click.echo(f"Error: invalid {settings.sources['bootnode_key']}: {exc}", err=True)
        return 2
    if created:
        logging.getLogger("gochat.bootnode").info("created a new bootnode key in %s", key_file)
    config = BootnodeConfig(
        listen=settings.listen,
        heartbeat_interval_s=settings.heartbeat_interval,
        peer_timeout_s=settings.peer_timeout,
        limits=Limits(
            max_peers=settings.max_peers,
            max_peers_per_room=settings.max_peers_per_room,
            max_peers_per_source=settings.max_peers_per_source,
            register_rate_per_ip=settings.register_rate,
            register_burst_per_ip=settings.register_burst,
            relay=settings.relay == "on",
            relay_rate=settings.relay_rate,
            relay_burst=settings.relay_burst,
            relay_total_rate=settings.relay_total_rate,
            relay_bindings_per_ip=settings.relay_bindings_per_ip,
            relay_max_bindings=settings.relay_max_bindings,
        ),
        recv_buffer_bytes=settings.recv_buffer,
        key=key,
        discovery_port=_discovery_port(settings),
        batch_wait_s=settings.batch_wait,
        cluster=settings.cluster,
        turn=TurnIssuer(settings.turn_url.url, settings.turn_secret)
        if settings.turn_url is not None and settings.turn_secret
        else None,
    )
    if settings.workers > 1:
        from gochat.bootnode.workers import run_workers

        try:
            return run_workers(config, settings.workers, settings.metrics_listen, settings.log_summary_interval)
        except OSError as exc:
            logging.getLogger("gochat").error("cannot serve on %s:%s: %s", *settings.listen, exc.strerror or exc)
            return 1
    try:
        return asyncio.run(serve(config, settings.metrics_listen, summary_interval_s=settings.log_summary_interval))
    except OSError as exc:
        logging.getLogger("gochat").error("cannot serve on %s:%s: %s", *settings.listen, exc.strerror or exc)
        return 1
