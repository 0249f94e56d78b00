"""A transfer's progress: rate, time left, path changes, and its terminal line."""

from __future__ import annotations

from twisted_nat.transfer.progress import (
    Progress,
    format_bytes,
    format_duration,
    render,
)

MIB = 1 << 20


def test_rate_and_eta_follow_the_bytes_moved():
    progress = Progress(100 * MIB, start=0.0)
    for second in range(1, 11):
        progress.moved(float(second), MIB)
    snapshot = progress.snapshot(10.0)
    assert snapshot.done == 10 * MIB
    assert snapshot.rate == MIB
    assert snapshot.eta == 90.0


def test_the_rate_forgets_what_is_older_than_its_window():
    progress = Progress(100 * MIB, start=0.0)
    progress.moved(1.0, 50 * MIB)
    for second in range(2, 21):
        progress.moved(float(second), MIB // 10)
    assert progress.rate(20.0) < MIB


def test_held_bytes_count_as_done_but_not_as_speed():
    progress = Progress(10 * MIB, start=0.0)
    progress.held(8 * MIB)
    progress.moved(2.0, MIB)
    snapshot = progress.snapshot(2.0)
    assert snapshot.done == 9 * MIB
    assert snapshot.rate == MIB / 2
    assert snapshot.eta == 2.0


def test_path_changes_are_counted_after_the_first_path():
    progress = Progress(1, start=0.0)
    assert progress.snapshot(0.0).path == "connecting"
    progress.path_is("relayed")
    progress.path_is("relayed")
    progress.path_is("direct")
    snapshot = progress.snapshot(1.0)
    assert (snapshot.path, snapshot.path_changes) == ("direct", 1)
    assert snapshot.as_json()["path_changes"] == 1
    assert "direct (1 path changes)" in render(snapshot, 120)


def test_nothing_moved_means_no_eta_and_done_means_zero():
    progress = Progress(MIB, start=0.0)
    assert progress.snapshot(5.0).eta is None
    progress.moved(6.0, MIB)
    assert progress.snapshot(6.0).eta == 0.0


def test_the_line_fits_its_width_and_shows_everything():
    progress = Progress(64 * MIB, start=0.0)
    progress.path_is("direct")
    progress.moved(2.0, 16 * MIB)
    line = render(progress.snapshot(2.0), 100)
    assert len(line) <= 100
    assert line.startswith("[########......")
    assert "25% 16.0 MiB / 64.0 MiB  8.0 MiB/s  ETA 0:06  direct" in line
    assert len(render(progress.snapshot(2.0), 40)) == 40


def test_units():
    assert format_bytes(0) == "0 B"
    assert format_bytes(1536) == "1.5 KiB"
    assert format_bytes(3 * 1024**4) == "3.0 TiB"
    assert format_duration(None) == "--:--"
    assert format_duration(61) == "1:01"
    assert format_duration(3725) == "1:02:05"


def test_the_reporter_redraws_one_line_on_a_terminal_and_prints_json_otherwise():
    import io
    import json

    from twisted.internet.task import Clock

    from twisted_nat.streams.stream import PeerAddress
    from twisted_nat.transfer.protocol import FileEntry, Offer
    from twisted_nat.transfer.report import Outcome, Reporter

    offer = Offer((FileEntry("a", 4 * MIB, "00" * 32),))
    clock = Clock()
    out, err = io.StringIO(), io.StringIO()
    terminal = Reporter(clock, out, err, as_json=False, terminal=True)
    terminal.offer(PeerAddress("alice", None), offer, incoming=True)
    terminal.path_is(relayed=True)
    terminal.accepted(0)
    terminal.moved(MIB)
    clock.advance(0.25)
    terminal.path_is(relayed=False)
    clock.advance(0.25)
    terminal.file_done("a", 4 * MIB, None)
    terminal.finished(Outcome(1, 1, None))
    text = err.getvalue()
    assert out.getvalue() == ""
    assert text.startswith("alice offers 1 file, 4.0 MiB:\n  a (4.0 MiB)\n")
    assert "\r[" in text and "relayed" in text
    assert "\r\x1b[Kthe path is direct now\n" in text
    assert "direct (1 path changes)" in text
    assert text.endswith("a: 4.0 MiB, SHA-256 checked\ndone: 1 files, 4.0 MiB in 0.5 s (direct)\n")

    clock = Clock()
    out, err = io.StringIO(), io.StringIO()
    scripted = Reporter(clock, out, err, as_json=True, terminal=True)
    scripted.offer(PeerAddress("alice", None), offer, incoming=True)
    scripted.accepted(0)
    scripted.moved(MIB)
    clock.advance(1.0)
    scripted.finished(Outcome(1, 0, "the sender went away"))
    kinds = [json.loads(line)["event"] for line in out.getvalue().splitlines()]
    assert kinds == ["offer", "accepted", "progress", "done"]
    assert err.getvalue() == ""
