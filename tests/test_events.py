"""The event values: frozen and slotted, and every one of them exactly as README.md's
line-mode table documents it (a renamed field or a new event fails here)."""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from pathlib import Path

import pytest

from gochat import events as ev

UNIONS = (typing.Union, types.UnionType)  # Optional[X] and X | None
README = Path(__file__).resolve().parent.parent / "README.md"


def documented_events() -> dict[str, tuple[set[str], set[str], dict[str, set[str]]]]:
    """kind -> (fields, optional fields, nested fields per field) from the README table."""
    text = README.read_text()
    section = text[text.index("### Line mode") :]
    section = section[: section.index("\n## ")]  # up to the next top-level section
    rows = re.findall(r"^\| (`\w+`(?: / `\w+`)*) \|([^|]*)\|[^|]*\|$", section, flags=re.M)
    assert rows, "README.md has no line-mode table"
    table = {}
    for kinds, cells in rows:
        fields: set[str] = set()
        optional: set[str] = set()
        nested: dict[str, set[str]] = {}
        stack: list = []  # open brackets: {} and [] hold nested fields, () holds values
        last = None
        for token in re.finditer(r"[{\[(]|[}\])]|optional `(\w+)`|`([^`]+)`", cells):
            t = token.group(0)
            if t in "{[(":
                stack.append(t)
            elif t in "}])":
                stack.pop()
            elif not stack:
                last = token.group(1) or token.group(2)
                fields.add(last)
                if token.group(1):
                    optional.add(last)
            elif "(" not in stack and last is not None:
                nested.setdefault(last, set()).add(token.group(2))
        for kind in re.findall(r"`(\w+)`", kinds):
            table[kind] = (fields, optional, nested)
    return table


def sample(cls):
    """An instance with a plausible value for every field, built from the type hints."""
    hints = typing.get_type_hints(cls)
    values = {}
    for f in dataclasses.fields(cls):
        hint = hints[f.name]
        origin, args = typing.get_origin(hint), typing.get_args(hint)
        if hint is bool:
            values[f.name] = True
        elif hint is int:
            values[f.name] = 1
        elif hint is float:
            values[f.name] = 1.5
        elif hint is str or (origin in UNIONS and str in args):
            values[f.name] = "x"
        elif origin in UNIONS and float in args:
            values[f.name] = 1.5
        elif dataclasses.is_dataclass(hint):
            values[f.name] = sample(hint)
        elif origin is tuple:
            values[f.name] = ("x",) if args[0] is str else (sample(args[0]),)
        elif origin is dict:
            values[f.name] = {"tampered": 1}
        else:
            raise AssertionError(f"no sample for {cls.__name__}.{f.name}: {hint}")
    return cls(**values)


def all_event_classes():
    return [c for c in vars(ev).values() if isinstance(c, type) and issubclass(c, ev.Event) and c is not ev.Event]


def test_every_event_class_is_printed_by_line_mode():
    assert set(all_event_classes()) == set(ev.LINE_MODE_EVENTS)


@pytest.mark.parametrize("cls", ev.LINE_MODE_EVENTS, ids=lambda c: c.kind)
def test_each_event_matches_the_readme_table(cls):
    table = documented_events()
    assert cls.kind in table, f"{cls.kind} is not in README.md's line-mode table"
    fields, optional, nested = table[cls.kind]
    out = sample(cls).to_json()
    assert out["event"] == cls.kind
    assert set(out) - {"event"} == fields
    for name in optional:  # documented as optional: left out when unset
        unset = dataclasses.replace(sample(cls), **{name: False})
        assert name not in unset.to_json()
    for name, inner in nested.items():
        value = out[name]
        item = value[0] if isinstance(value, list) else value
        assert set(item) == inner, f"{cls.kind}.{name}"


def test_the_table_documents_no_event_that_does_not_exist():
    assert set(documented_events()) == {c.kind for c in ev.LINE_MODE_EVENTS}


def test_events_are_frozen_slotted_values():
    for cls in all_event_classes():
        event = sample(cls)
        assert not hasattr(event, "__dict__"), cls.__name__
        for f in dataclasses.fields(cls):
            with pytest.raises(dataclasses.FrozenInstanceError):
                setattr(event, f.name, None)
        assert event == sample(cls)


def test_json_names_follow_the_documented_schema():
    assert ev.MessageReceived("bob", "ab12", "hi").to_json() == {
        "event": "message",
        "from": "bob",
        "fingerprint": "ab12",
        "text": "hi",
        "style": "say",
    }
    assert ev.Error("boom").to_json() == {"event": "error", "message": "boom"}
    assert ev.Error("boom", fatal=True).to_json() == {"event": "error", "message": "boom", "fatal": True}
    assert ev.BootnodeLost().to_json() == {"event": "bootnode_lost"}
