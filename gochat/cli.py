"""The ``gochat`` command: settings first (refused up front, exit 2), then the mode."""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from pathlib import Path

import click

from . import __version__
from .config import SPECS, ConfigError, Settings, resolve


def _options(func):
    for spec in reversed(SPECS):
        if spec.flag is None:
            continue
        func = click.option(
            spec.flag, spec.field, default=None, metavar="VALUE",
            help=f"{spec.help} [env {spec.env}; default {spec.default or 'none'}]",
        )(func)
    return func


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@_options
@click.option("--env-file", "env_file", default=".env", show_default=True, metavar="PATH",
              help="settings file read after the environment (never overrides it)")
@click.version_option(__version__, "--version", prog_name="gochat")
def main(env_file: str, **flags) -> None:
    """Peer-to-peer group chat over UDP: a bootnode introduces the peers of a room."""
    try:
        settings = resolve(flags, os.environ, Path(env_file) if env_file else None)
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from None
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if settings.mode == "bootnode":
        sys.exit(run_bootnode(settings))
    click.echo("gochat: client mode is not available in this version yet (only --mode bootnode)", err=True)
    sys.exit(1)


def run_bootnode(settings: Settings) -> int:
    from .bootnode import BootnodeConfig, serve
    from .rendezvous import Limits

    config = BootnodeConfig(
        listen=settings.listen,
        heartbeat_interval_s=settings.heartbeat_interval,
        peer_timeout_s=settings.peer_timeout,
        limits=Limits(
            max_peers=settings.max_peers,
            max_peers_per_room=settings.max_peers_per_room,
            register_rate_per_ip=settings.register_rate,
            register_burst_per_ip=settings.register_burst,
        ),
        recv_buffer_bytes=settings.recv_buffer,
    )
    try:
        return asyncio.run(serve(config, settings.metrics_listen))
    except OSError as exc:
        logging.getLogger("gochat").error("cannot serve on %s:%s: %s", *settings.listen, exc.strerror or exc)
        return 1
