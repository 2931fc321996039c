"""The systemd unit shipped for operators: systemd itself finds nothing wrong with it, and
the command line it runs starts a bootnode that stops cleanly on the signal systemd sends."""

from __future__ import annotations

import re
import shlex
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
UNIT = REPO / "deploy" / "gochat-bootnode.service"
GOCHAT = Path(sys.executable).parent / "gochat"


def _exec_start() -> list[str]:
    line = next(line for line in UNIT.read_text().splitlines() if line.startswith("ExecStart="))
    return shlex.split(line.removeprefix("ExecStart="))


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="needs systemd-analyze (make system-deps)")
def test_systemd_verifies_the_unit(tmp_path):
    # The unit runs /usr/local/bin/gochat (pip's place as root); here gochat is in the venv.
    unit = tmp_path / UNIT.name
    unit.write_text(UNIT.read_text().replace("/usr/local/bin/gochat", str(GOCHAT)))
    r = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "Unknown" not in r.stderr and "Failed" not in r.stderr, r.stderr


@pytest.mark.slow
def test_the_units_command_line_runs_a_bootnode_that_stops_on_sigterm(tmp_path):
    args = _exec_start()
    assert args[0] == "/usr/local/bin/gochat" and "--mode" in args and args[args.index("--mode") + 1] == "bootnode"
    args = [str(GOCHAT), *args[1:]]
    args[args.index("--listen") + 1] = "[::1]:0"  # the unit's [::]:9595, on a free loopback port
    proc = subprocess.Popen(
        args,
        env={"XDG_DATA_HOME": str(tmp_path), "PATH": "/usr/bin:/bin"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stderr is not None
        for line in proc.stderr:  # bounded: it exits on any error
            if re.search(r"bootnode listening on udp \[::1\]:\d+", line):
                break
        else:
            raise AssertionError("the bootnode did not start")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
        assert (tmp_path / "gochat" / "bootnode.key").exists()  # in the state directory
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
