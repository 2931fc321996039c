"""The package layout's dependency rules, checked on every module's imports.

The tree says which side a file serves: gochat/bootnode/ is the rendezvous server,
gochat/client/ the chat client, gochat/frontends/ what a user sees of the client. The
bootnode never depends on client code and the client never on bootnode code; what they
share lives in gochat/wire/ (codecs), gochat/crypto/ (keys and sessions), and the top-level
constants and ratelimit modules. wire and crypto stay leaves so both sides can use them.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import NamedTuple

import pytest

PACKAGE = "gochat"
REPO_ROOT = Path(__file__).resolve().parent.parent


class Rule(NamedTuple):
    scope: str  # the modules the rule covers: this module and everything under it
    allowed: tuple[str, ...] | None  # when set, the only parts of the package they may import
    forbidden: tuple[str, ...]  # parts of the package they must never import


# A newcomer tells from the tree which side a file serves: the bootnode never depends on
# client code and vice versa; they share wire, crypto, constants and ratelimit.
RULES = (
    Rule("gochat.bootnode", None, ("gochat.client", "gochat.frontends", "gochat.events")),
    Rule("gochat.client", None, ("gochat.bootnode", "gochat.frontends")),
    Rule("gochat.wire", ("gochat.wire", "gochat.constants"), ()),
    Rule("gochat.crypto", ("gochat.crypto",), ()),
    Rule("gochat.events", None, ("gochat.bootnode", "gochat.client", "gochat.frontends")),
)
OPTIONAL_SCOPES = {"gochat.events"}  # introduced after the other parts; its rule waits for it


class Module(NamedTuple):
    name: str  # dotted, e.g. gochat.bootnode.driver
    path: Path
    is_package: bool  # an __init__ module: relative imports start from itself
    file: str  # the path shown in messages, relative to the directory holding the package


class Import(NamedTuple):
    name: str  # absolute dotted name of the imported module
    line: int


class Violation(NamedTuple):
    module: Module
    imp: Import
    rule: Rule

    def __str__(self) -> str:
        if self.rule.allowed is not None:
            why = f"{self.rule.scope} may import nothing of {PACKAGE} but {', '.join(self.rule.allowed)}"
        else:
            why = f"{self.rule.scope} must never import {', '.join(self.rule.forbidden)}"
        return f"{self.module.file}:{self.imp.line}: {self.module.name} imports {self.imp.name} ({why})"


def within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def package_modules(root: Path, package: str = PACKAGE) -> list[Module]:
    """Every .py and .pyx module of `package`, found under `root` (the directory holding it)."""
    modules = []
    for path in sorted((root / package).rglob("*")):
        if path.suffix not in (".py", ".pyx") or "__pycache__" in path.parts:
            continue
        parts = list(path.relative_to(root).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        if is_package:
            parts.pop()
        modules.append(Module(".".join(parts), path, is_package, path.relative_to(root).as_posix()))
    return modules


def resolve(module: Module, level: int, target: str | None) -> str:
    """The absolute name of `from <level dots><target> import ...` written in `module`."""
    if level == 0:
        return target or ""
    base = module.name.split(".")
    if not module.is_package:
        base.pop()
    if level - 1 > len(base) - 1:
        raise ValueError(f"{module.path}: relative import beyond the top-level package")
    base = base[: len(base) - (level - 1)]
    return ".".join(base + ([target] if target else []))


def _from_import(
    module: Module, known: set, level: int, target: str | None, names: list[str], line: int
) -> list[Import]:
    # `from a import b` imports the module a.b when b is one, otherwise a name of module a.
    base = resolve(module, level, target)
    found = []
    for name in names:
        full = f"{base}.{name}"
        imp = Import(full if full in known else base, line)
        if imp not in found:
            found.append(imp)
    return found


_PYX_FROM = re.compile(r"^[ \t]*from[ \t]+(\.*)([\w.]*)[ \t]+c?import[ \t]+(\([^)]*\)|[^\n#]*)", re.MULTILINE)
_PYX_IMPORT = re.compile(r"^[ \t]*c?import[ \t]+([^\n#]+)", re.MULTILINE)


def _names(clause: str) -> list[str]:
    """The imported names of an import clause: `a.b as c, d` gives ['a.b', 'd']."""
    clause = clause.strip().strip("()").replace("\\\n", " ")
    return [part.split()[0] for part in clause.replace("\n", " ").split(",") if part.strip()]


def imports_of(module: Module, known: set) -> list[Import]:
    """Every import in the module, wherever it is written (top level, functions, branches)."""
    text = module.path.read_text(encoding="utf-8")
    found: list[Import] = []
    if module.path.suffix == ".pyx":
        for m in _PYX_FROM.finditer(text):
            line = text.count("\n", 0, m.start()) + 1
            found += _from_import(module, known, len(m.group(1)), m.group(2) or None, _names(m.group(3)), line)
        for m in _PYX_IMPORT.finditer(text):
            line = text.count("\n", 0, m.start()) + 1
            found += [Import(name, line) for name in _names(m.group(1))]
        return sorted(found, key=lambda i: i.line)
    for node in ast.walk(ast.parse(text, filename=str(module.path))):
        if isinstance(node, ast.Import):
            found += [Import(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            found += _from_import(module, known, node.level, node.module, [a.name for a in node.names], node.lineno)
    return sorted(found, key=lambda i: i.line)


def breaks(rule: Rule, name: str, package: str = PACKAGE) -> bool:
    if not within(name, package):
        return False  # the standard library and third-party packages are not the layout's business
    if any(within(name, f) for f in rule.forbidden):
        return True
    if rule.allowed is not None:
        # the package root itself is imported by every submodule; only its parts are ruled
        return name != package and not any(within(name, a) for a in rule.allowed)
    return False


def find_violations(root: Path, rules=RULES, package: str = PACKAGE) -> list[Violation]:
    modules = package_modules(root, package)
    known = {m.name for m in modules}
    violations = []
    for module in modules:
        for rule in rules:
            if within(module.name, rule.scope):
                violations += [
                    Violation(module, imp, rule) for imp in imports_of(module, known) if breaks(rule, imp.name, package)
                ]
    return violations


# --- the real package ---------------------------------------------------------------------


@pytest.mark.parametrize("rule", RULES, ids=[r.scope.split(".")[-1] for r in RULES])
def test_package_follows_the_rule(rule):
    modules = [m for m in package_modules(REPO_ROOT) if within(m.name, rule.scope)]
    if not modules:
        assert rule.scope in OPTIONAL_SCOPES, f"no module {rule.scope}: the layout moved, update RULES"
        pytest.skip(f"{rule.scope} does not exist yet")
    violations = find_violations(REPO_ROOT, rules=(rule,))
    assert not violations, "layout rule broken:\n" + "\n".join(str(v) for v in violations)


def test_the_scan_sees_the_imports_of_every_kind_of_module():
    # A scan that found nothing would pass every rule: check it sees imports it must see.
    modules = {m.name: m for m in package_modules(REPO_ROOT)}
    known = set(modules)
    assert {"gochat.bootnode._fastpath", "gochat.bootnode", "gochat.client.room", "gochat.wire.control"} <= known
    pyx = {i.name for i in imports_of(modules["gochat.bootnode._fastpath"], known)}
    assert {"gochat.wire.endpoints", "gochat.bootnode._purepath", "libc.stdint", "os"} <= pyx
    rendezvous = {i.name for i in imports_of(modules["gochat.bootnode.rendezvous"], known)}
    assert {"gochat.wire.control", "gochat.ratelimit", "gochat.bootnode.cookie"} <= rendezvous
    cli = {i.name for i in imports_of(modules["gochat.cli"], known)}
    assert "gochat" in cli  # `from . import __version__`: a relative import, resolved


# --- the check itself, on a small fake package ---------------------------------------------


def write(root: Path, files: dict) -> Path:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


CLEAN = {
    "gochat/__init__.py": "",
    "gochat/constants.py": "X = 1\n",
    "gochat/ratelimit.py": "",
    "gochat/wire/__init__.py": "",
    "gochat/wire/control.py": "import struct\nfrom gochat.constants import X\nfrom . import endpoints\n",
    "gochat/wire/endpoints.py": "from .. import constants\n",
    "gochat/crypto/__init__.py": "",
    "gochat/crypto/noise.py": "from cryptography.hazmat.primitives import hashes\nfrom .replay import Window\n",
    "gochat/crypto/replay.py": "class Window: pass\n",
    "gochat/bootnode/__init__.py": "",
    "gochat/bootnode/driver.py": (
        "from gochat.wire import control\nfrom ..crypto import noise\nfrom gochat import ratelimit\n"
    ),
    "gochat/bootnode/_fastpath.pyx": (
        "from libc.stdint cimport uint8_t\ncimport cython\nimport os\n"
        "from gochat.wire.endpoints import key  # shared\n"
        'cdef extern from "sys/socket.h":\n    pass\n'
        'def f():\n    """Fed from the table to the socket."""\n'
    ),
    "gochat/client/__init__.py": "",
    "gochat/client/room.py": "from gochat.wire import control\nfrom . import peer\n",
    "gochat/client/peer.py": "import gochat.crypto.noise\n",
    "gochat/frontends/__init__.py": "",
    "gochat/frontends/ui.py": "from gochat.client import room\nfrom gochat.bootnode import driver\n",
    "gochat/events.py": "from gochat.wire.endpoints import key\n",
}


def test_a_clean_package_has_no_violations(tmp_path):
    assert find_violations(write(tmp_path, CLEAN)) == []


@pytest.mark.parametrize(
    "path,text,line,imported,scope",
    [
        # bootnode -> client, relative, inside a function
        (
            "gochat/bootnode/driver.py",
            "import os\n\ndef f():\n    from ..client import room\n",
            4,
            "gochat.client.room",
            "gochat.bootnode",
        ),
        # bootnode -> client by `from <package> import <subpackage>`
        ("gochat/bootnode/driver.py", "from gochat import client\n", 1, "gochat.client", "gochat.bootnode"),
        # the Cython module: from-import and cimport lines
        (
            "gochat/bootnode/_fastpath.pyx",
            "import os\n\nfrom gochat.events import Joined\n",
            3,
            "gochat.events",
            "gochat.bootnode",
        ),
        (
            "gochat/bootnode/_fastpath.pyx",
            "from libc.stdint cimport uint8_t\ncimport gochat.frontends.ui\n",
            2,
            "gochat.frontends.ui",
            "gochat.bootnode",
        ),
        (
            "gochat/bootnode/_fastpath.pyx",
            "from ..client.room import (\n    RoomClient,\n)\n",
            1,
            "gochat.client.room",
            "gochat.bootnode",
        ),
        # client -> bootnode, under a branch
        (
            "gochat/client/peer.py",
            "import sys\nif sys.platform:\n    import gochat.bootnode.driver as d\n",
            3,
            "gochat.bootnode.driver",
            "gochat.client",
        ),
        ("gochat/client/room.py", "from ..frontends.ui import Screen\n", 1, "gochat.frontends.ui", "gochat.client"),
        # wire and crypto are leaves
        (
            "gochat/wire/endpoints.py",
            "from gochat.ratelimit import TokenBuckets\n",
            1,
            "gochat.ratelimit",
            "gochat.wire",
        ),
        ("gochat/wire/endpoints.py", "from ..crypto import noise\n", 1, "gochat.crypto.noise", "gochat.wire"),
        ("gochat/crypto/replay.py", "from gochat.constants import X\n", 1, "gochat.constants", "gochat.crypto"),
        ("gochat/crypto/__init__.py", "from ..wire import control\n", 1, "gochat.wire.control", "gochat.crypto"),
        # events serves the client's frontends, never imports them or either side
        ("gochat/events.py", "from .client import room\n", 1, "gochat.client.room", "gochat.events"),
    ],
)
def test_a_broken_rule_is_reported_with_module_line_and_import(tmp_path, path, text, line, imported, scope):
    root = write(tmp_path, {**CLEAN, path: text})
    (v,) = find_violations(root)
    assert (v.imp.name, v.imp.line, v.rule.scope) == (imported, line, scope)
    message = str(v)
    assert message.startswith(f"{path}:{line}: ") and f"imports {imported} " in message


def test_imports_of_other_packages_are_not_the_layouts_business(tmp_path):
    root = write(tmp_path, {**CLEAN, "gochat/wire/data.py": "import gochatter\nfrom client import x\n"})
    assert find_violations(root) == []
