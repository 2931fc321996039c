"""gochat: terminal peer-to-peer group chat over UDP with a rendezvous bootnode."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("gochat")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0+unknown"
