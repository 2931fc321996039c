"""Settings precedence (flags > environment > .env > defaults) and up-front refusal."""

from __future__ import annotations

import os
import random
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from gochat.config import SPECS, ConfigError, parse_duration, parse_host_port, resolve

BOOT = {"mode": "bootnode"}


def test_defaults_match_the_seed():
    s = resolve(BOOT, {}, None)
    assert s.listen == ("0.0.0.0", 9595)
    assert (s.heartbeat_interval, s.peer_timeout, s.port, s.bootnode_udp_port) == (10.0, 15.0, 4545, 9595)
    assert s.sources["peer_timeout"] == "PEER_TIMEOUT (default)"


def test_precedence_flag_env_dotenv_default(tmp_path: Path):
    env_file = tmp_path / ".env"
    env_file.write_text("PEER_TIMEOUT=40s\nHEARTBEAT_INTERVAL=20\nLISTEN=127.0.0.1:7000\nMAX_PEERS=5\n")
    s = resolve({"mode": "bootnode", "listen": "127.0.0.1:7100"}, {"PEER_TIMEOUT": "30"}, env_file)
    assert s.listen == ("127.0.0.1", 7100) and "command line" in s.sources["listen"]
    assert s.peer_timeout == 30.0 and s.sources["peer_timeout"] == "PEER_TIMEOUT (environment)"
    assert s.heartbeat_interval == 20.0 and str(env_file) in s.sources["heartbeat_interval"]
    assert s.max_peers == 5
    assert s.max_peers_per_room == 1024 and "default" in s.sources["max_peers_per_room"]


def test_dotenv_never_overrides_environment(tmp_path: Path):
    env_file = tmp_path / ".env"
    env_file.write_text("MODE=client\n")
    assert resolve({}, {"MODE": "bootnode"}, env_file).mode == "bootnode"


@pytest.mark.parametrize(
    "flags, env, needle",
    [
        ({"listen": "127.0.0.1:70000"}, {}, "--listen (command line)"),
        ({"listen": "nonsense"}, {}, "port is missing"),
        ({}, {"LISTEN": "::1:9595"}, "LISTEN (environment)"),
        ({}, {"PEER_TIMEOUT": "-3s"}, "PEER_TIMEOUT (environment)"),
        ({}, {"HEARTBEAT_INTERVAL": "soon"}, "HEARTBEAT_INTERVAL"),
        ({"heartbeat_interval": "20s"}, {}, "must be below the peer timeout"),
        ({"mode": "relay"}, {}, "must be one of: bootnode, client"),
        ({"max_peers": "0"}, {}, "--max-peers"),
    ],
)
def test_bad_values_name_setting_and_source(flags, env, needle):
    with pytest.raises(ConfigError, match=None) as info:
        resolve({**BOOT, **flags}, env, None)
    assert needle in str(info.value)


def test_client_mode_needs_room_and_bootnode():
    with pytest.raises(ConfigError, match="room"):
        resolve({"mode": "client", "bootnode": "127.0.0.1"}, {}, None)
    with pytest.raises(ConfigError, match="bootnode"):
        resolve({"mode": "client", "room": "x"}, {}, None)
    s = resolve({"mode": "client", "room": "x"}, {"BOOTNODE": "example.org", "BOOTNODE_UDP_PORT": "9000"}, None)
    assert s.bootnode == ("example.org", 9000)


def test_parsers():
    assert parse_duration("1m30s") == 90.0 and parse_duration("500ms") == 0.5 and parse_duration("2.5") == 2.5
    for bad in ("", "0", "-1", "10x", "s", "nan", "inf"):
        with pytest.raises(ValueError):
            parse_duration(bad)
    assert parse_host_port("[::]:9595") == ("::", 9595)
    assert parse_host_port("host.example", 9595) == ("host.example", 9595)
    with pytest.raises(ValueError):
        parse_host_port("[::1:9595")


def run_cli(*args, env=None, cwd=None, stdin=subprocess.DEVNULL):
    return subprocess.run(
        [sys.executable, "-m", "gochat", *args],
        capture_output=True,
        text=True,
        timeout=30,
        env=env,
        cwd=cwd,
        stdin=stdin,
    )


@pytest.mark.slow
def test_cli_refuses_bad_settings_with_exit_code_2(tmp_path):
    r = run_cli("--mode", "bootnode", "--listen", "127.0.0.1:99999", cwd=tmp_path)
    assert r.returncode == 2
    assert "--listen (command line)" in r.stderr and "65535" in r.stderr
    (tmp_path / ".env").write_text("PEER_TIMEOUT=-1\n")
    r = run_cli("--mode", "bootnode", cwd=tmp_path)
    assert r.returncode == 2 and "PEER_TIMEOUT (file .env)" in r.stderr


@pytest.mark.slow
def test_cli_version_and_help():
    r = run_cli("--version")
    assert r.returncode == 0 and r.stdout.startswith("gochat, version")
    r = run_cli("--help")
    assert r.returncode == 0 and "--peer-timeout" in r.stdout and "PEER_TIMEOUT" in r.stdout


def test_client_settings_name_identity_passphrase_line_mode(tmp_path: Path):
    base = {"mode": "client", "room": "x", "bootnode": "127.0.0.1"}
    s = resolve(base, {"USER": "alice"}, None)
    assert s.name == "alice" and s.identity is None and s.passphrase == "" and s.no_ui is False
    s = resolve(
        {**base, "name": "Zoë 漢字"},
        {"IDENTITY_FILE": str(tmp_path / "id"), "ROOM_PASSPHRASE": "pw", "NO_UI": "yes", "LOCAL_UDP_PORT": "0"},
        None,
    )
    assert (s.name, s.identity, s.passphrase, s.no_ui, s.port) == ("Zoë 漢字", tmp_path / "id", "pw", True, 0)
    assert resolve(base, {"USER": "a-very-long-login-name-" * 3}, None).name.encode().__len__() <= 32
    for bad, needle in (("x" * 33, "--name (command line)"), ("", "must not be empty"), ("a\tb", "control")):
        with pytest.raises(ConfigError, match=None) as info:
            resolve({**base, "name": bad}, {}, None)
        assert needle in str(info.value)
    with pytest.raises(ConfigError) as info:
        resolve(base, {"NO_UI": "maybe"}, None)
    assert "NO_UI (environment)" in str(info.value)


def test_bootnode_key_settings(tmp_path: Path):
    s = resolve(BOOT, {}, None)
    assert s.bootnode_key is None and s.bootnode_public_key is None  # the default key file; trust on first use
    s = resolve({**BOOT, "bootnode_key": str(tmp_path / "k")}, {}, None)
    assert s.bootnode_key == tmp_path / "k" and s.sources["bootnode_key"] == "--bootnode-key (command line)"
    base = {"mode": "client", "room": "x", "bootnode": "127.0.0.1"}
    s = resolve(base, {"BOOTNODE_PUBLIC_KEY": "ab" * 32}, None)
    assert s.bootnode_public_key == bytes([0xAB]) * 32
    for bad, needle in (("ab" * 31, "got 31 bytes"), ("zz" * 32, "64 hex digits")):
        with pytest.raises(ConfigError) as info:
            resolve(base, {"BOOTNODE_PUBLIC_KEY": bad}, None)
        assert "BOOTNODE_PUBLIC_KEY (environment)" in str(info.value) and needle in str(info.value)


def test_max_peers_per_source():
    assert resolve(BOOT, {}, None).max_peers_per_source == 16
    assert resolve(BOOT, {"MAX_PEERS_PER_SOURCE": "4"}, None).max_peers_per_source == 4
    with pytest.raises(ConfigError) as info:
        resolve({**BOOT, "max_peers_per_source": "0"}, {}, None)
    assert "--max-peers-per-source (command line)" in str(info.value)


# --- what a first day meets: the shipped .env.example, damaged files --------------------

REPO = Path(__file__).resolve().parent.parent


def _clean_env(tmp_path: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in {s.env for s in SPECS}}
    env["XDG_DATA_HOME"] = str(tmp_path / "data")
    return env


@pytest.mark.slow
def test_every_mode_starts_with_the_shipped_env_example_copied_to_env(tmp_path: Path):
    """`cp .env.example .env` leaves every setting empty but MODE: empty means unset."""
    shutil.copy(REPO / ".env.example", tmp_path / ".env")
    env = _clean_env(tmp_path)
    bootnode = subprocess.Popen(
        [sys.executable, "-m", "gochat", "--mode", "bootnode", "--listen", "127.0.0.1:0"],
        cwd=tmp_path,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert bootnode.stderr is not None
        port = None
        for line in bootnode.stderr:  # bounded: the process ends on a bad setting
            if m := re.search(r"listening on udp (?:\S*?):(\d+)", line):
                port = int(m.group(1))
                break
        assert port, "the bootnode did not start with the shipped .env"
        client = run_cli(
            "--bootnode", f"127.0.0.1:{port}", "--room", "r", "--no-ui", "--port", "0", env=env, cwd=tmp_path
        )
        assert client.returncode == 0, client.stderr  # end of input: a graceful quit
        assert '"event": "started"' in client.stdout
        demo = run_cli("--mode", "demo", "--no-ui", env=env, cwd=tmp_path)
        assert demo.returncode == 0, demo.stderr
    finally:
        bootnode.terminate()
        bootnode.wait(timeout=10)


def _one_line_error(stderr: str, needle: str) -> None:
    assert "Traceback" not in stderr
    errors = [line for line in stderr.splitlines() if line.startswith(("Error:", "gochat:"))]
    assert len(errors) == 1 and needle in errors[0], stderr


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(3))
def test_random_bytes_as_env_or_state_files_give_one_line_and_a_defined_exit_code(tmp_path: Path, seed: int):
    rng = random.Random(seed)
    junk = [rng.randbytes(300), ("\n".join(rng.choice(["é=", "=x", "a b", "{", "\x00"]) for _ in range(9))).encode()]
    env = _clean_env(tmp_path)
    state = tmp_path / "data" / "gochat"
    client = ("--mode", "client", "--bootnode", "127.0.0.1:9", "--room", "r", "--no-ui", "--register-timeout", "1s")
    for data in junk:
        (tmp_path / ".env").write_bytes(data)
        r = run_cli(*client, env=env, cwd=tmp_path)
        assert r.returncode == 2
        _one_line_error(r.stderr, "file .env")
    (tmp_path / ".env").unlink()
    for name in ("identity", "known_peers.json", "known_bootnodes.json"):
        for data in junk:
            shutil.rmtree(state, ignore_errors=True)
            state.mkdir(parents=True)
            if name != "identity":  # a good identity beside the damaged file
                assert run_cli(*client, env=env, cwd=tmp_path, stdin=subprocess.DEVNULL).returncode in (0, 1)
            path = state / name
            path.write_bytes(data)
            path.chmod(0o600)
            r = run_cli(*client, env=env, cwd=tmp_path)
            assert r.returncode == 1, r.stderr
            _one_line_error(r.stderr, str(path))
    for data in junk:
        key = tmp_path / "bootnode.key"
        key.write_bytes(data)
        key.chmod(0o600)
        r = run_cli("--mode", "bootnode", "--listen", "127.0.0.1:0", "--bootnode-key", str(key), env=env, cwd=tmp_path)
        assert r.returncode == 2
        _one_line_error(r.stderr, str(key))


def test_a_list_of_bootnodes():
    s = resolve({"mode": "client", "room": "r", "bootnode": "a.example:9595, b.example,[::1]:7"}, {}, None)
    assert s.bootnodes == (("a.example", 9595), ("b.example", 9595), ("::1", 7)) and s.bootnode == ("a.example", 9595)
    with pytest.raises(ConfigError, match="pins one bootnode"):
        resolve({"mode": "client", "room": "r", "bootnode": "a:1,b:2", "bootnode_public_key": "ab" * 32}, {}, None)


def test_every_member_of_a_room_orders_the_bootnodes_alike_and_rooms_spread():
    from gochat.client.driver import bootnode_order

    nodes = [("a", 1), ("b", 2), ("c", 3)]
    assert bootnode_order(nodes, "lobby") == bootnode_order(list(nodes), "lobby")
    orders = {tuple(bootnode_order(nodes, f"room{i}")) for i in range(60)}
    assert len({o[0] for o in orders}) == 3  # rooms start at every bootnode
    for o in orders:  # always the list's order, rotated
        k = nodes.index(o[0])
        assert list(o) == nodes[k:] + nodes[:k]


def test_a_name_with_several_addresses_is_ordered_alike_by_every_member():
    """Round-robin DNS gives each client its own order; the room's hash does not. A list
    of names keeps each name's addresses together, IPv4 first."""
    import socket as socket_module

    from gochat.client.driver import bootnode_addresses

    answers = [("198.51.100.3", 9595), ("198.51.100.1", 9595), ("2001:db8::1", 9595), ("198.51.100.2", 9595)]

    def rotating(host, port):
        answers.append(answers.pop(0))  # a resolver that rotates its answers
        family = socket_module.AF_INET6 if host == "boot.example" else socket_module.AF_INET
        return family, list(answers) if host == "boot.example" else [("192.0.2.9", port)]

    results = [bootnode_addresses([("boot.example", 9595), ("other.example", 1)], "lobby", rotating) for _ in range(4)]
    assert all(r == results[0] for r in results)
    family, addresses, names = results[0]
    assert family == socket_module.AF_INET6 and len(addresses) == 5
    mine = [a for a in addresses if names[a] == "boot.example:9595"]
    assert [":" in a[0] for a in mine] == [False, False, False, True]  # IPv4 first, rotated, then IPv6
    firsts = {bootnode_addresses([("boot.example", 9595)], f"room{i}", rotating)[1][0] for i in range(40)}
    assert len(firsts) == 3  # rooms start at every machine behind the name
