"""The chat screen's widgets rendered to urwid canvases (no terminal needed)."""

from __future__ import annotations

import re

import urwid

from gochat import events as ev
from gochat.frontends.ui import NARROW, ChatScreen, peer_colour

ME_FP = "aaaa bbbb cccc dddd eeee ffff 0000 1111"
BOB_FP = "1234 5678 9abc def0 1234 5678 9abc def0"


def text_of(widget, cols, rows) -> str:
    canvas = widget.render((cols, rows), focus=True)
    return "\n".join(line.decode("utf-8") for line in canvas.text)


def screen_with_bob():
    sent = []
    screen = ChatScreen("lobby", "alice", ME_FP, sent.append)
    screen.handle_event(ev.Registered("lobby", "alice", "203.0.113.5:4545", ME_FP, again=False))
    screen.handle_event(ev.PeerJoined("bob", BOB_FP, "ab" * 32, trust="new"))
    screen.handle_event(ev.PeerConnected("bob", BOB_FP, "direct", "198.51.100.2:4545"))
    return screen, sent


def test_layout_header_messages_sidebar_input():
    screen, _ = screen_with_bob()
    screen.handle_event(ev.MessageReceived("bob", BOB_FP, "hi alice"))
    out = text_of(screen, 100, 20)
    lines = out.splitlines()
    assert "room lobby" in lines[0] and "alice (aaaa bbbb)" in lines[0] and "bootnode connected" in lines[0]
    assert "bob joined" in out and "bob connected (direct, 198.51.100.2:4545)" in out
    assert "bob: hi alice" in out
    assert "peers" in out and "bob 1234 5678" in out and "direct" in out  # the sidebar
    assert lines[-1].startswith("> ")


def test_narrow_and_tiny_terminals_degrade_without_crashing():
    screen, _ = screen_with_bob()
    for i in range(30):
        screen.handle_event(ev.MessageReceived("bob", BOB_FP, f"line {i} " * 5))
    narrow = text_of(screen, NARROW - 1, 10)
    assert "peers" not in narrow and "line 29" in narrow  # sidebar hidden, messages kept
    for cols, rows in ((20, 5), (10, 3), (1, 1), (200, 60)):
        text_of(screen, cols, rows)


def test_wide_characters_are_laid_out_by_display_width():
    screen, _ = screen_with_bob()
    screen.handle_event(ev.MessageReceived("bob", BOB_FP, "漢字" * 30))
    out = text_of(screen, 50, 12)
    for line in out.splitlines():
        assert urwid.str_util.calc_width(line, 0, len(line)) <= 50
    assert "漢字漢字" in out


def test_input_history_and_submit():
    screen, sent = screen_with_bob()
    size = (80, 10)
    for ch in "first":
        screen.keypress(size, ch)
    screen.keypress(size, "enter")
    for ch in "second":
        screen.keypress(size, ch)
    screen.keypress(size, "enter")
    assert sent == ["first", "second"] and screen.input.edit_text == ""
    screen.keypress(size, "up")
    assert screen.input.edit_text == "second"
    screen.keypress(size, "up")
    assert screen.input.edit_text == "first"
    screen.keypress(size, "down")
    screen.keypress(size, "down")
    assert screen.input.edit_text == ""
    screen.keypress(size, "enter")  # empty lines are not sent
    assert sent == ["first", "second"]


def test_scrollback_shows_more_below_until_back_at_the_bottom():
    screen, _ = screen_with_bob()
    size = (80, 10)
    for i in range(40):
        screen.handle_event(ev.MessageReceived("bob", BOB_FP, f"m{i}"))
    text_of(screen, *size)
    screen.keypress(size, "page up")
    screen.keypress(size, "page up")
    screen.handle_event(ev.MessageReceived("bob", BOB_FP, "newest"))
    out = text_of(screen, *size)
    assert "more below (1 new)" in out and "newest" not in out
    for _ in range(5):
        screen.keypress(size, "page down")
    out = text_of(screen, *size)
    assert "more below" not in out and "newest" in out


def test_undelivered_is_marked_on_the_message_and_errors_are_system_lines():
    screen, _ = screen_with_bob()
    screen.own_message("did you get this?")
    screen.handle_event(ev.Undelivered(("bob",), (BOB_FP,), "did you get this?", "peer_gone"))
    screen.handle_event(ev.KeyChanged("carol", BOB_FP, ME_FP, "WARNING: carol has a different key"))
    screen.handle_event(ev.BootnodeUnanswered("192.0.2.1:9595", 1, 1.0, 60.0))
    assert "bootnode registering (no answer for 1 s)" in text_of(screen, 200, 14).splitlines()[0]
    assert "no answer from the bootnode 192.0.2.1:9595 yet: trying for up to 60 s" in text_of(screen, 200, 14)
    screen.handle_event(ev.BootnodeLost())
    screen.handle_event(ev.PathChanged("bob", BOB_FP, "direct", "198.51.100.2:5000", "198.51.100.2:4545"))
    out = text_of(screen, 200, 14)
    assert "bob now reached directly at 198.51.100.2:5000 (was 198.51.100.2:4545)" in out
    assert "alice: did you get this?  ✗ not delivered to bob" in out
    screen.own_message("and this?")
    screen.handle_event(ev.Undelivered(("bob", "carol"), (BOB_FP, ME_FP), "and this?", "timeout"))
    screen.handle_event(ev.PeerNamed("robert", BOB_FP, "ab" * 32, "bob"))
    out = text_of(screen, 200, 16)
    assert "alice: and this?  ✗ not confirmed by bob, carol" in out  # it may still have arrived
    assert "bob is robert: the name its handshake proved" in out and "robert" in out.split("peers")[1]
    assert "* WARNING: carol has a different key" in out
    assert "bootnode lost" in out.splitlines()[0]


def test_peer_colours_are_stable_and_spread():
    assert peer_colour(BOB_FP) == peer_colour(BOB_FP)
    assert len({peer_colour(f"{i:04x} fingerprint") for i in range(100)}) >= 6


BOB2_FP = "6cd5 0000 1111 2222 3333 4444 5555 6666"


def test_two_peers_with_one_name_are_two_rows_two_labels_and_one_leaves_alone():
    """Peers are told apart by key: two `bob`s are `bob (1234)` and `bob (6cd5)` in the
    sidebar and on their messages; one leaving leaves the other in place."""
    screen, _ = screen_with_bob()
    screen.handle_event(ev.PeerJoined("bob", BOB2_FP, "cd" * 32, trust="new"))
    screen.handle_event(ev.PeerConnected("bob", BOB2_FP, "direct", "198.51.100.3:4545"))
    screen.handle_event(ev.MessageReceived("bob", BOB_FP, "from the first"))
    screen.handle_event(ev.MessageReceived("bob", BOB2_FP, "from the second"))
    out = text_of(screen, 110, 24)
    assert "bob (1234): from the first" in out and "bob (6cd5): from the second" in out
    assert "│bob (1234) 1234 5678" in out and "│bob (6cd5) 6cd5 0000" in out  # two rows
    screen.handle_event(ev.PeerLeft("bob", BOB2_FP, "quit"))
    out = text_of(screen, 110, 24)
    assert "bob (6cd5) left (quit)" in out
    assert "│bob 1234 5678" in out and "nobody yet" not in out  # the first bob stays, plain again


def test_a_peer_with_our_name_is_shown_with_its_fingerprint():
    screen, _ = screen_with_bob()
    screen.handle_event(ev.PeerJoined("alice", BOB2_FP, "cd" * 32, trust="new"))
    screen.handle_event(ev.NameClash("alice", BOB2_FP, ME_FP, "someone else joined with your name"))
    screen.handle_event(ev.MessageReceived("alice", BOB2_FP, "i am alice too"))
    out = text_of(screen, 110, 24)
    assert "alice (6cd5): i am alice too" in out and "someone else joined with your name" in out


def _type(screen, size, keys):
    for key in keys:
        screen.keypress(size, key)


def test_shell_editing_keys():
    screen, _ = screen_with_bob()
    size = (80, 10)
    _type(screen, size, "hello big world")
    _type(screen, size, ["ctrl w"])
    assert screen.input.edit_text == "hello big "
    _type(screen, size, ["ctrl a"])
    _type(screen, size, "oh ")
    assert screen.input.edit_text == "oh hello big " and screen.input.edit_pos == 3
    _type(screen, size, ["ctrl k"])
    assert screen.input.edit_text == "oh "
    _type(screen, size, ["ctrl e", *"there", "left", "left", "ctrl u"])
    assert screen.input.edit_text == "re" and screen.input.edit_pos == 0


def test_tab_completes_peer_names_and_commands():
    screen, sent = screen_with_bob()
    screen.handle_event(ev.PeerJoined("bobby", BOB2_FP, "cd" * 32, trust="new"))
    size = (80, 10)
    _type(screen, size, ["b", "o", "tab"])
    assert screen.input.edit_text == "bob"  # the common start of bob and bobby
    _type(screen, size, ["tab"])
    assert screen.input.edit_text == "bob: "
    _type(screen, size, ["tab"])
    assert screen.input.edit_text == "bobby: "  # each match in turn
    _type(screen, size, ["ctrl u", "/", "v", "e", "tab"])
    assert screen.input.edit_text == "/verify "
    _type(screen, size, ["b", "o", "b", "b", "tab", "enter"])
    assert sent == ["/verify bobby "]


def test_a_key_jumps_back_to_the_newest_line():
    screen, _ = screen_with_bob()
    for i in range(60):
        screen.handle_event(ev.MessageReceived("bob", BOB_FP, f"line {i}"))
    size = (80, 12)
    text_of(screen, *size)
    screen.keypress(size, "page up")
    screen.keypress(size, "page up")
    screen.handle_event(ev.MessageReceived("bob", BOB_FP, "while away"))
    assert "more below (1 new)" in text_of(screen, *size)
    screen.keypress(size, "ctrl end")
    out = text_of(screen, *size)
    assert "while away" in out and "more below" not in out


def test_mentions_are_highlighted_and_ring_and_styles_are_shown():
    rings = []
    screen = ChatScreen("lobby", "alice", ME_FP, lambda _: None, bell=lambda: rings.append(1))
    screen.handle_event(ev.PeerJoined("bob", BOB_FP, "ab" * 32, trust="new"))
    screen.handle_event(ev.MessageReceived("bob", BOB_FP, "lunch, anyone?"))
    assert rings == []
    screen.handle_event(ev.MessageReceived("bob", BOB_FP, "Alice: lunch?"))
    assert rings == [1]
    screen.handle_event(ev.MessageReceived("bob", BOB_FP, "malice aforethought"))  # not a word of its own
    assert rings == [1]
    screen.handle_event(ev.MessageReceived("bob", BOB_FP, "waves at alice", "action"))
    screen.handle_event(ev.MessageReceived("bob", BOB_FP, "a secret", "private"))
    assert rings == [1, 1, 1]
    out = text_of(screen, 100, 20)
    assert "* bob waves at alice" in out and "bob → you (private): a secret" in out
    assert re.search(r"^\d\d:\d\d:\d\d bob: Alice: lunch\?", out, re.M)  # seconds in the time
    mention = next(w for w in screen.messages.walker if "Alice: lunch?" in w.text)
    assert ("mention", len("Alice: lunch?")) in mention.get_text()[1]


def test_without_a_bell_nothing_rings():
    screen = ChatScreen("lobby", "alice", ME_FP, lambda _: None, bell=None)
    screen.handle_event(ev.MessageReceived("bob", BOB_FP, "alice!", "private"))  # no error, no bell
    assert "bob → you (private): alice!" in text_of(screen, 100, 10)


def test_the_sidebar_shows_a_relayed_peer_and_its_move_to_a_direct_path():
    screen, _ = screen_with_bob()

    def sidebar_state():
        lines = text_of(screen, 160, 20).splitlines()
        row = next(i for i, line in enumerate(lines) if "│bob 1234" in line)
        return lines[row + 1].rsplit("│", 2)[1].strip()

    assert sidebar_state() == "direct"
    screen.handle_event(ev.PathChanged("bob", BOB_FP, "relay", "relay", "198.51.100.2:4545"))
    assert "bob now reached through the relay (was 198.51.100.2:4545)" in text_of(screen, 160, 20)
    assert sidebar_state() == "relay"
    screen.handle_event(ev.PathChanged("bob", BOB_FP, "direct", "198.51.100.2:5000", "relay"))
    assert "bob now reached directly at 198.51.100.2:5000 (was relay)" in text_of(screen, 160, 20)
    assert sidebar_state() == "direct"
