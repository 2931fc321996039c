"""A room's conversation kept across restarts: on disk (0600, bounded, damaged lines
skipped), shown again on start at its own times with day-change lines, reachable by
PgUp, forgotten by /clear."""

from __future__ import annotations

import stat
import time

from gochat import events as ev
from gochat.frontends.history import Entry, History, history_path
from gochat.frontends.ui import ChatScreen

from .test_ui import BOB_FP, ME_FP, text_of

DAY_s = 86400.0


def test_entries_are_kept_private_bounded_and_survive_damage(tmp_path):
    path = history_path(tmp_path, "203.0.113.1:9595", "lobby")
    assert "lobby" not in str(path)  # file names do not show room names
    h = History(path, limit=10)
    for i in range(25):
        h.append(Entry(1000.0 + i, "bob", BOB_FP, f"m{i}"))
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert len(path.read_text().splitlines()) <= 20  # rewritten past twice the limit
    assert [e.text for e in h.load()] == [f"m{i}" for i in range(15, 25)]
    with open(path, "ab") as f:
        f.write(b"\xff{not json\n")
    h.append(Entry(2000.0, None, None, "mine", "action"))
    assert [e.text for e in History(path, limit=10).load()][-2:] == ["m24", "mine"]
    h.clear()
    assert not path.exists() and History(path).load() == []


def test_the_conversation_comes_back_at_its_own_times_with_day_lines(tmp_path):
    path = history_path(tmp_path, "b:9595", "lobby")
    yesterday = time.time() - DAY_s
    h = History(path)
    h.append(Entry(yesterday, "bob", BOB_FP, "good night"))
    first = ChatScreen("lobby", "alice", ME_FP, lambda _: None, history=h)
    first.show_history()
    first.handle_event(ev.MessageReceived("bob", BOB_FP, "good morning"))
    first.own_message("morning!")
    first.own_message("waves", "action")

    again = ChatScreen("lobby", "alice", ME_FP, lambda _: None, history=History(path))
    again.show_history()
    out = text_of(again, 100, 30)
    lines = out.splitlines()
    stamp = time.strftime("%H:%M:%S", time.localtime(yesterday))
    assert any(line.startswith(f"{stamp} bob: good night") for line in lines)
    today = time.strftime("%A %d %B %Y")
    day_line = next(i for i, line in enumerate(lines) if today in line and "───" in line)
    night = next(i for i, line in enumerate(lines) if "good night" in line)
    morning = next(i for i, line in enumerate(lines) if "good morning" in line)
    assert night < day_line < morning  # the day changed between the two
    assert "alice: morning!" in out and "* alice waves" in out
    assert "above: 4 earlier messages of this room" in out


def test_page_up_reaches_the_kept_conversation(tmp_path):
    h = History(history_path(tmp_path, "b:9595", "lobby"))
    for i in range(100):
        h.append(Entry(time.time() - 3600 + i, "bob", BOB_FP, f"kept {i}"))
    screen = ChatScreen("lobby", "alice", ME_FP, lambda _: None, history=h)
    screen.show_history()
    size = (100, 20)
    assert "kept 0" not in text_of(screen, *size)
    for _ in range(30):
        screen.keypress(size, "page up")
    assert "kept 0" in text_of(screen, *size)


def test_without_a_history_nothing_is_written(tmp_path):
    screen = ChatScreen("lobby", "alice", ME_FP, lambda _: None, history=None)
    screen.show_history()
    screen.own_message("not kept")
    assert list(tmp_path.iterdir()) == []
