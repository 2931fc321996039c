"""A NAT lab made of network namespaces, for tests that run real gochat processes
behind real (kernel) NATs.

    host a1 (10.0.1.2) ─┐                                   ┌─ host b1 (10.0.2.2)
    host a2 (10.0.1.3) ─┴ nat A (198.18.2.2) ── inet ── nat B (198.18.3.2)
                                                 │
                                          bootnode (198.18.1.2:9595)

"inet" is a plain router; impairments (random loss by nft, delay and reordering by a
transparent user-space relay) apply there, on the public path between the NATs and
never inside a NAT router (dropping there would also cancel the new mapping). The NAT
kinds are built from iptables/nft rules:

- port-restricted cone: MASQUERADE plus conntrack (Linux's own behaviour);
- full cone: that, plus a static DNAT of the client port to the host;
- restricted cone (address only): a dynamic nft set of contacted addresses, whose
  members get the DNAT;
- symmetric: MASQUERADE --random-fully, a new port for every destination.

Every NAT router drops unsolicited NEW packets to itself in INPUT, or the conntrack
entry they leave steals the port the next outbound mapping wants. Only addresses inside
these namespaces are used, and everything is deleted afterwards.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import threading
from pathlib import Path

FULL_CONE, RESTRICTED, PORT_RESTRICTED, SYMMETRIC = "full-cone", "restricted-cone", "port-restricted", "symmetric"
CLIENT_PORT = 4545
BOOTNODE = "198.18.1.2:9595"
RELAY = Path(__file__).with_name("udp_relay.py")


def missing_requirements() -> str | None:
    """Why the lab cannot run here, or None."""
    if os.geteuid() != 0:
        return "the NAT lab needs root (network namespaces, iptables, nft); CI runs it as root"
    for tool in ("ip", "iptables", "nft"):
        if shutil.which(tool) is None:
            return f"the NAT lab needs {tool} (make system-deps installs it)"
    probe = f"gcprobe{os.getpid()}"
    if subprocess.run(["ip", "netns", "add", probe], capture_output=True).returncode != 0:
        return "cannot create network namespaces here"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


class Lab:
    def __init__(self, kind_a: str, kind_b: str, hosts_a: int = 1, hosts_b: int = 1) -> None:
        tag = f"gc{os.getpid() % 100000}"
        self.ns = {role: f"{tag}{role}" for role in ("inet", "boot", "nata", "natb")}
        self.hosts = {"a": [f"{tag}a{i + 1}" for i in range(hosts_a)], "b": [f"{tag}b{i + 1}" for i in range(hosts_b)]}
        self.kinds = {"a": kind_a, "b": kind_b}
        self._procs: list[subprocess.Popen] = []
        self._created: list[str] = []
        try:
            self._build()
        except BaseException:
            self.close()
            raise

    # --- helpers ----------------------------------------------------------------------

    def prefix(self, ns: str) -> list[str]:
        return ["ip", "netns", "exec", ns]

    def sh(self, ns: str, script: str) -> None:
        result = subprocess.run([*self.prefix(ns), "sh", "-ec", script], capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(f"in {ns}: {script}\n{result.stderr}")

    def nft(self, ns: str, ruleset: str) -> None:
        result = subprocess.run([*self.prefix(ns), "nft", "-f", "-"], input=ruleset, capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(f"nft in {ns}:\n{ruleset}\n{result.stderr}")

    def _add_ns(self, name: str) -> None:
        subprocess.run(["ip", "netns", "add", name], check=True, capture_output=True)
        self._created.append(name)
        self.sh(name, "ip link set lo up")

    def _veth(self, ns1: str, if1: str, ns2: str, if2: str) -> None:
        subprocess.run(
            ["ip", "link", "add", if1, "netns", ns1, "type", "veth", "peer", "name", if2, "netns", ns2],
            check=True,
            capture_output=True,
        )

    # --- topology ---------------------------------------------------------------------

    def _build(self) -> None:
        for name in [*self.ns.values(), *self.hosts["a"], *self.hosts["b"]]:
            self._add_ns(name)
        inet = self.ns["inet"]
        self._veth(inet, "boot", self.ns["boot"], "pub")
        self._veth(inet, "nata", self.ns["nata"], "pub")
        self._veth(inet, "natb", self.ns["natb"], "pub")
        self.sh(
            inet,
            """
            sysctl -qw net.ipv4.ip_forward=1
            ip addr add 198.18.1.1/24 dev boot; ip link set boot up
            ip addr add 198.18.2.1/24 dev nata; ip link set nata up
            ip addr add 198.18.3.1/24 dev natb; ip link set natb up
        """,
        )
        self.sh(
            self.ns["boot"],
            "ip addr add 198.18.1.2/24 dev pub; ip link set pub up; ip route add default via 198.18.1.1",
        )
        for side, net in (("a", 1), ("b", 2)):
            nat = self.ns[f"nat{side}"]
            self.sh(
                nat,
                f"""
                sysctl -qw net.ipv4.ip_forward=1
                ip addr add 198.18.{net + 1}.2/24 dev pub; ip link set pub up
                ip route add default via 198.18.{net + 1}.1
                ip link add lan type bridge; ip addr add 10.0.{net}.1/24 dev lan; ip link set lan up
            """,
            )
            for i, host in enumerate(self.hosts[side]):
                self._veth(nat, f"h{i + 1}", host, "eth0")
                self.sh(nat, f"ip link set h{i + 1} master lan; ip link set h{i + 1} up")
                self.sh(
                    host,
                    f"ip addr add 10.0.{net}.{i + 2}/24 dev eth0; ip link set eth0 up; "
                    f"ip route add default via 10.0.{net}.1",
                )
            self._nat_rules(nat, self.kinds[side], f"10.0.{net}.2")

    def _nat_rules(self, ns: str, kind: str, host: str) -> None:
        masquerade = "MASQUERADE --random-fully" if kind == SYMMETRIC else "MASQUERADE"
        self.sh(
            ns,
            f"""
            iptables -t nat -A POSTROUTING -o pub -j {masquerade}
            iptables -A INPUT -i pub -m conntrack --ctstate NEW,INVALID -j DROP
            iptables -A FORWARD -i lan -j ACCEPT
            iptables -A FORWARD -i pub -m conntrack --ctstate ESTABLISHED,RELATED,DNAT -j ACCEPT
            iptables -A FORWARD -i pub -j DROP
        """,
        )
        if kind == FULL_CONE:
            self.sh(
                ns,
                f"iptables -t nat -A PREROUTING -i pub -p udp --dport {CLIENT_PORT} "
                f"-j DNAT --to-destination {host}:{CLIENT_PORT}",
            )
        elif kind == RESTRICTED:
            self.nft(
                ns,
                f"""
                table ip restricted {{
                    set contacted {{ type ipv4_addr; flags dynamic,timeout; timeout 5m; }}
                    chain outbound {{ type filter hook forward priority 0; policy accept;
                        iifname "lan" oifname "pub" update @contacted {{ ip daddr }}
                    }}
                    chain inbound {{ type nat hook prerouting priority -100; policy accept;
                        iifname "pub" udp dport {CLIENT_PORT} ip saddr @contacted dnat to {host}:{CLIENT_PORT}
                    }}
                }}
            """,
            )

    def impair(
        self, loss_percent: int, delay_ms: float, jitter_ms: float, seconds: float, bootnode_too: bool = False
    ) -> None:
        """Loss (nft) plus delay and reordering (the relay) between the two NATs' public
        addresses, in the inet router; with ``bootnode_too`` the bootnode's traffic with
        them suffers the same (registrations, introductions), otherwise it is left alone."""
        inet = self.ns["inet"]
        publics = "{ 198.18.1.2, 198.18.2.2, 198.18.3.2 }" if bootnode_too else "{ 198.18.2.2, 198.18.3.2 }"
        self.nft(
            inet,
            f"""
            table ip impair {{
                chain pre {{ type filter hook prerouting priority -150; policy accept;
                    ip saddr {publics} ip daddr {publics} numgen random mod 100 < {loss_percent} counter drop
                    ip saddr {publics} ip daddr {publics} meta l4proto udp tproxy to :7777 meta mark set 1 accept
                }}
            }}
        """,
        )
        self.sh(inet, "ip rule add fwmark 1 lookup 100; ip route add local 0.0.0.0/0 dev lo table 100")
        relay = subprocess.Popen(
            [*self.prefix(inet), "python3", str(RELAY), "7777", str(delay_ms), str(jitter_ms), str(seconds)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.relay_log: list[str] = []
        threading.Thread(target=lambda: self.relay_log.extend(relay.stderr), daemon=True).start()
        self._procs.append(relay)
        assert relay.stdout is not None and relay.stdout.readline().strip() == "relay ready"

    def impaired_drops(self) -> int:
        """Datagrams the loss rule dropped so far."""
        out = subprocess.run(
            [*self.prefix(self.ns["inet"]), "nft", "list", "table", "ip", "impair"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        match = re.search(r"counter packets (\d+)", out)
        return int(match.group(1)) if match else 0

    def close(self) -> None:
        for proc in self._procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait(10)
        for name in reversed(self._created):
            pids = subprocess.run(["ip", "netns", "pids", name], capture_output=True, text=True).stdout.split()
            for pid in pids:
                subprocess.run(["kill", "-9", pid], capture_output=True)
            subprocess.run(["ip", "netns", "del", name], capture_output=True)
        self._created.clear()

    def __enter__(self) -> Lab:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
