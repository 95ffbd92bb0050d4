from __future__ import annotations

from engine.events import EventLog, Status, read_events


def test_an_event_after_a_cut_line_is_kept(tmp_path):
    log = EventLog(tmp_path / "events.jsonl")
    log.append(Status(message="one"))
    with open(log.path, "a", encoding="utf-8") as handle:
        handle.write('{"type": "Status", "mess')  # a crash mid-write
    log.append(Status(message="two"))
    assert [event.message for event in read_events(log.path)] == ["one", "two"]
