import os
import stat

from ipython_energy.spool import Spool


def test_append_ack_pending_and_private_modes(energy_home):
    spool = Spool.create("s1")
    seqs = [spool.append({"type": "metrics", "uid": "r", "metrics": [["x", i, i, 0]]}) for i in range(5)]
    assert seqs == [1, 2, 3, 4, 5]
    spool.ack(3)
    assert spool.acked == 3
    assert [seq for seq, _ in spool.events() if seq > spool.acked] == [4, 5]
    # A reopened journal (by a later adopter) sees the same state.
    assert stat.S_IMODE(os.stat(spool.directory).st_mode) == 0o700
    for name in ("s1.jsonl", "s1.acked", "s1.lock"):
        assert stat.S_IMODE(os.stat(spool.directory / name).st_mode) == 0o600, name
    assert stat.S_IMODE(os.stat(energy_home).st_mode) == 0o700


def test_live_session_cannot_be_adopted_dead_one_can(energy_home):
    live = Spool.create("alive")
    live.append({"type": "x", "uid": "u"})
    assert Spool.adopt(live.directory, "alive") is None  # its owner holds the lock
    live.close()  # owner gone (as after a crash: the kernel's flock dies with it)
    adopted = Spool.adopt(live.directory, "alive")
    assert adopted is not None
    assert adopted.acked == 0
    assert [ev["type"] for _, ev in adopted.events()] == ["x"]


def test_torn_last_line_is_skipped(energy_home):
    spool = Spool.create("torn")
    spool.append({"type": "a", "uid": "u"})
    with open(spool.path, "ab") as f:
        f.write(b'{"seq": 2, "type": "b", "ui')  # a crash in the middle of a write
    spool.close()
    again = Spool.adopt(spool.directory, "torn")
    assert [ev["type"] for _, ev in again.events()] == ["a"]
    assert again.append({"type": "c", "uid": "u"}) == 2
    assert [ev["type"] for _, ev in again.events()] == ["a", "c"]


def test_retire_deletes_only_when_everything_is_acked(energy_home):
    spool = Spool.create("r")
    spool.append({"type": "a", "uid": "u"})
    spool.close(retire=True)
    assert spool.path.exists()  # not acked: kept for replay
    spool = Spool.adopt(spool.directory, "r")
    spool.ack(1)
    spool.close(retire=True)
    assert not spool.path.exists()
