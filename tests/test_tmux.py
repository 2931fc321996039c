"""The real program in a real terminal: tmux runs it, send-keys types, capture-pane reads
the screen. Waiting means polling the screen until the text appears, within a bound."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from gochat.bootnode.metrics import parse_exposition

from .procs import Bootnode

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("tmux") is None, reason="needs tmux (make system-deps installs it)"),
]


class Tmux:
    def __init__(self, tmp_path: Path, cols: int = 100, rows: int = 30) -> None:
        self.socket = f"gochat-test-{os.getpid()}-{id(self)}"
        self.tmp = tmp_path
        self.cols, self.rows = cols, rows
        self.panes: list = []

    def tmux(self, *args: str) -> str:
        return subprocess.run(
            ["tmux", "-L", self.socket, *args], capture_output=True, text=True, check=True, timeout=10
        ).stdout

    def run(self, name: str, *gochat_args: str) -> str:
        """Start gochat in a new pane (the first one creates the session); returns the pane id."""
        data = self.tmp / name
        data.mkdir(parents=True, exist_ok=True)
        exit_file = data / "exit"
        command = (
            f"cd {shlex.quote(os.getcwd())} && XDG_DATA_HOME={shlex.quote(str(data))} "
            f"{shlex.quote(sys.executable)} -m gochat --env-file '' {' '.join(map(shlex.quote, gochat_args))}; "
            f"echo $? > {shlex.quote(str(exit_file))}; sleep 600"
        )
        if not self.panes:
            self.tmux(
                "new-session",
                "-d",
                "-s",
                "t",
                "-x",
                str(self.cols),
                "-y",
                str(self.rows),
                "-P",
                "-F",
                "#{pane_id}",
                command,
            )
            pane = self.tmux("list-panes", "-t", "t", "-F", "#{pane_id}").split()[0]
        else:
            pane = self.tmux("split-window", "-t", "t", "-h", "-P", "-F", "#{pane_id}", command).strip()
        self.panes.append((pane, exit_file))
        return pane

    def keys(self, pane: str, *keys: str) -> None:
        self.tmux("send-keys", "-t", pane, *keys)

    def type(self, pane: str, text: str) -> None:
        self.tmux("send-keys", "-t", pane, "-l", text)
        self.tmux("send-keys", "-t", pane, "Enter")

    def screen(self, pane: str) -> str:
        return self.tmux("capture-pane", "-p", "-t", pane)

    def wait_for(self, pane: str, pattern: str, timeout: float = 15.0) -> str:
        deadline = time.monotonic() + timeout
        while True:
            text = self.screen(pane)
            if re.search(pattern, text):
                return text
            if time.monotonic() > deadline:
                raise AssertionError(f"{pattern!r} never appeared on the screen:\n{text}")
            time.sleep(0.05)  # polling the screen: tmux has no "text appeared" notification

    def exit_code(self, pane: str, timeout: float = 15.0) -> int:
        exit_file = dict(self.panes)[pane]
        deadline = time.monotonic() + timeout
        while not exit_file.exists() or not exit_file.read_text().strip():
            if time.monotonic() > deadline:
                raise AssertionError(f"the program did not exit; screen:\n{self.screen(pane)}")
            time.sleep(0.05)
        return int(exit_file.read_text())

    def program_pid(self, pane: str) -> int:
        shell = self.tmux("display-message", "-p", "-t", pane, "#{pane_pid}").strip()
        return int(subprocess.run(["pgrep", "-P", shell], capture_output=True, text=True).stdout.split()[0])

    def close(self) -> None:
        subprocess.run(["tmux", "-L", self.socket, "kill-server"], capture_output=True)


@pytest.fixture
def term(tmp_path):
    t = Tmux(tmp_path)
    yield t
    t.close()


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_demo_echo_verify_resize_and_quit(term):
    pane = term.run("me", "--mode", "demo", "--name", "me")
    screen = term.wait_for(pane, r"echo connected \(direct")
    assert "room lobby" in screen.splitlines()[0] and "bootnode connected" in screen.splitlines()[0]
    assert re.search(r"│echo [0-9a-f]{4} [0-9a-f]{4}", screen) and "direct" in screen  # the sidebar
    term.type(pane, "hello tmux 漢字")
    screen = term.wait_for(pane, r"echo: 字漢 xumt olleh")
    assert "me: hello tmux 漢字" in screen
    term.type(pane, "/verify echo")
    term.wait_for(pane, r"safety number with echo:[^\n]*\n\d\d:\d\d:\d\d \* (\d{5} ){5}\d{5}")
    known_file = term.tmp / "me" / "gochat" / "demo" / "known_peers.json"  # the demo keeps its own
    assert json.loads(known_file.read_text())["peers"]["echo"]["verified"] is False  # not compared yet
    term.type(pane, "/verify echo confirm")
    term.wait_for(pane, r"echo is now marked verified")
    assert json.loads(known_file.read_text())["peers"]["echo"]["verified"] is True
    term.type(pane, "/nonsense")
    term.wait_for(pane, r"unknown command /nonsense: try /help")

    term.tmux("resize-window", "-t", "t", "-x", "20", "-y", "5")
    term.wait_for(pane, r"^ gochat · room lobby\n(.*\n){3}> ?$")
    term.type(pane, "tiny")  # still alive and answering
    term.tmux("resize-window", "-t", "t", "-x", "100", "-y", "30")
    term.wait_for(pane, r"echo: ynit")
    screen = term.wait_for(pane, r"─ peers ─")  # the sidebar is back
    assert screen.splitlines()[0].startswith(" gochat · room lobby · me (")

    term.type(pane, "/quit")
    assert term.exit_code(pane) == 0


def test_two_clients_in_two_panes_idle_cpu_and_graceful_quit(term):
    boot = Bootnode(extra=["--metrics-listen", "127.0.0.1:0"])
    try:
        metrics = re.search(r"metrics on http://(\S+)/metrics", boot.wait_for_line(r"metrics on")).group(1)
        args = ("--mode", "client", "--bootnode", boot.address, "--room", "pair", "--port", "0")
        alice = term.run("alice", *args, "--name", "alice")
        bob = term.run("bob", *args, "--name", "bob")
        term.wait_for(alice, r"bob connected \(direct")
        term.wait_for(bob, r"alice connected \(direct")
        term.type(alice, "hi bob, from the left pane")
        term.wait_for(bob, r"alice: hi bob, from the left pane")
        term.type(bob, "hi alice")
        term.wait_for(alice, r"bob: hi alice")

        pid = term.program_pid(alice)
        before = cpu_seconds(pid)
        time.sleep(5)  # the measurement window: an idle client for 5 s
        idle = cpu_seconds(pid) - before
        print(f"idle client CPU over 5 s: {idle * 1000:.0f} ms")
        assert idle < 0.5

        term.type(alice, "/quit")
        assert term.exit_code(alice) == 0
        term.wait_for(bob, r"alice left \(quit\)")
        values = parse_exposition(urllib.request.urlopen(f"http://{metrics}/metrics", timeout=5).read().decode())
        assert values["gochat_disconnected_total"] == 1  # the bootnode saw a graceful disconnect
        term.keys(bob, "C-c")  # Ctrl-C is a graceful quit too
        assert term.exit_code(bob) == 0
    finally:
        boot.stop()


def test_unreachable_bootnode_leaves_the_terminal_clean_with_the_reason(term):
    import socket

    hold = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    hold.bind(("127.0.0.1", 0))  # a port where nobody answers
    try:
        port = hold.getsockname()[1]
        pane = term.run(
            "lonely",
            "--mode",
            "client",
            "--bootnode",
            f"127.0.0.1:{port}",
            "--room",
            "r",
            "--port",
            "0",
            "--register-timeout",
            "8s",
        )
        term.wait_for(pane, r"bootnode registering \(no answer for \d+ s\)")
        assert term.exit_code(pane, timeout=20) == 1
        screen = term.wait_for(pane, r"gochat: bootnode 127\.0\.0\.1:\d+ did not answer after 4 tries over 8 s")
        assert "room r" not in screen  # the UI is gone, the shell's screen is back
    finally:
        hold.close()


def test_the_conversation_is_there_after_a_restart_until_cleared(tmp_path):
    """Quit and start again: the room's conversation is back, each line at its time;
    after /clear it is gone for good."""

    def run_demo() -> tuple[Tmux, str]:
        (tmp_path / "me" / "exit").unlink(missing_ok=True)
        t = Tmux(tmp_path)
        pane = t.run("me", "--mode", "demo", "--name", "me")
        t.wait_for(pane, r"echo connected \(direct")
        return t, pane

    t, pane = run_demo()
    try:
        t.type(pane, "remember me")
        t.wait_for(pane, r"echo: em rebmemer")
        t.type(pane, "/quit")
        assert t.exit_code(pane) == 0
    finally:
        t.close()
    t, pane = run_demo()
    try:
        screen = t.wait_for(pane, r"above: 2 earlier messages of this room")
        assert re.search(r"\d\d:\d\d:\d\d me: remember me", screen) and "echo: em rebmemer" in screen
        t.type(pane, "/clear")
        t.type(pane, "/quit")
        assert t.exit_code(pane) == 0
    finally:
        t.close()
    t, pane = run_demo()
    try:
        screen = t.screen(pane)
        assert "remember me" not in screen and "earlier messages" not in screen
        t.type(pane, "/quit")
        assert t.exit_code(pane) == 0
    finally:
        t.close()


def test_completion_editing_actions_and_private_messages_in_a_real_terminal(tmp_path):
    boot = Bootnode()
    term = Tmux(tmp_path, cols=246, rows=30)  # three panes of 80 columns
    try:
        args = ("--mode", "client", "--bootnode", boot.address, "--room", "keys", "--port", "0")
        alice = term.run("alice", *args, "--name", "alice")
        bob = term.run("bob", *args, "--name", "bob")
        carol = term.run("carol", *args, "--name", "carol")
        term.tmux("select-layout", "-t", "t", "even-horizontal")
        for pane, others in ((alice, ("bob", "carol")), (bob, ("alice", "carol")), (carol, ("alice", "bob"))):
            for other in others:
                term.wait_for(pane, rf"{other} connected \(direct")
        term.keys(alice, "b", "o", "Tab")  # completes the name, as IRC clients do
        term.tmux("send-keys", "-t", alice, "-l", "lunch? no, wrong word")
        term.keys(alice, "C-w", "C-w", "BSpace", "BSpace", "Enter")  # Ctrl-W twice, then the ", "
        term.wait_for(bob, r"alice: bob: lunch\? no\s")
        term.type(alice, "/me waves")
        term.wait_for(carol, r"\* alice waves")
        term.type(alice, "/msg carol only for you")
        term.wait_for(carol, r"alice → you \(private\): only for you")
        term.wait_for(alice, r"alice → carol \(private\): only for you")
        term.type(alice, "after that")
        term.wait_for(bob, r"alice: after that")
        assert "only for you" not in term.screen(bob)  # bob got nothing of it
        for pane in (alice, bob, carol):
            term.type(pane, "/quit")
            assert term.exit_code(pane) == 0
    finally:
        term.close()
        boot.stop()
