"""A disk that refuses writes, and a data dir that was damaged, as an operator meets them.

The full disk is SQLite's own: ``PRAGMA max_page_count`` caps the file, so a
batch fails exactly as it does on a full filesystem ("database or disk is
full"), without privileges or a small mount.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from grpclib import GRPCError, Status

from trio_election.core import Holder
from trio_election.server import _store

from ._support import StartNode, settle
from .test_datadir import NOT_SERVING, SERVING, health_of


@pytest.fixture
def disks(monkeypatch: pytest.MonkeyPatch) -> list[sqlite3.Connection]:
    """Every LeaseStore opened from now on: its connection, to cap or free its file."""
    opened: list[sqlite3.Connection] = []
    original = _store.LeaseStore._open

    def _open(self: _store.LeaseStore) -> None:
        original(self)
        opened.append(self._db)

    monkeypatch.setattr(_store.LeaseStore, "_open", _open)
    return opened


def fill(db: sqlite3.Connection) -> None:
    """No page more than the file has now: the next batch that needs one fails."""
    pages = db.execute("PRAGMA page_count").fetchone()[0]
    db.execute(f"PRAGMA max_page_count = {pages}")


async def test_a_full_disk_refuses_writes_acknowledges_nothing_and_recovers(
    start_node: StartNode, disks: list[sqlite3.Connection], tmp_path: Path
):
    node = await start_node()
    client = node.client()
    held = await client.try_become_leader("held", "w1", ttl_ms=60_000)
    assert held.success
    fill(disks[0])
    # Grants until one needs a page the disk does not have (each row is ~4 KiB).
    value = b"v" * 3000
    acked, refused = [], None
    for k in range(50):
        try:
            reply = await client.try_become_leader(f"e{k}", "w2", ttl_ms=60_000, value=value)
            acked.append((f"e{k}", reply.leader.fencing_token))
        except GRPCError as exc:
            refused = (f"e{k}", exc)
            break
    assert refused is not None, "the capped file never filled"
    election, exc = refused
    assert exc.status is Status.UNAVAILABLE
    assert "leases.db" in exc.message and "full" in exc.message, exc.message
    await settle()
    assert await health_of(node.port, "") == NOT_SERVING
    # New grants and releases are refused with the same sentence; renewals of what is on disk go on.
    for call in (
        client.try_become_leader("other", "w3"),
        client.release("held", "w1", held.leader.fencing_token),
    ):
        with pytest.raises(GRPCError) as refusal:
            await call
        assert refusal.value.status is Status.UNAVAILABLE and "full" in refusal.value.message
    assert (await client.heartbeat("held", "w1", held.leader.fencing_token)).success
    # The refused grant is in memory only: nobody is told of it, its holder neither.
    with pytest.raises(GRPCError) as unsynced:
        await client.current_leader(election)
    assert unsynced.value.status is Status.UNAVAILABLE
    with pytest.raises(GRPCError):
        await client.heartbeat(election, "w2")
    # Space again: the next try writes the batch, and the node serves as before.
    disks[0].execute("PRAGMA max_page_count = 1000000")
    assert (await client.heartbeat(election, "w2")).success
    await settle()
    assert await health_of(node.port, "") == SERVING
    late = await client.try_become_leader("other", "w3")
    assert late.success
    # Everything acknowledged survives a restart, and tokens never repeat.
    await node.stop()
    again = (await start_node()).client()
    for name, token in [*acked, ("held", held.leader.fencing_token)]:
        assert (await again.current_leader(name)).leader.fencing_token == token
    fresh = await again.try_become_leader("after", "w4")
    assert fresh.leader.fencing_token > late.leader.fencing_token


def refused_start(data_dir: Path) -> str:
    """Start a node on ``data_dir``; return its one line on stderr (it must exit 1)."""
    command = [sys.executable, "-m", "trio_election", "node", "--listen", "127.0.0.1:0"]
    command += ["--data-dir", str(data_dir)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 1 and len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    return lines[0]


def a_data_dir(path: Path, holders: int = 3) -> Path:
    store = _store.LeaseStore(path)
    rows = [
        (f"e{k}", Holder(f"e{k}", f"holder-{k}", k + 1, 5000, b"", 0.0, "")) for k in range(holders)
    ]
    store.write(holders, rows)
    store.close()
    return path


def test_a_garbage_lease_store_is_refused_with_one_sentence(tmp_path: Path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "leases.db").write_bytes(os.urandom(8192))
    line = refused_start(data)
    assert "leases.db is not a readable lease store" in line and "refusing to start" in line


def test_a_truncated_lease_store_is_refused_with_one_sentence(tmp_path: Path):
    data = a_data_dir(tmp_path / "data", holders=300)
    db = data / "leases.db"
    db.write_bytes(db.read_bytes()[: db.stat().st_size // 2])
    line = refused_start(data)
    assert "leases.db" in line and "refusing to start" in line


def test_one_changed_byte_in_a_row_is_refused_not_served(tmp_path: Path):
    data = a_data_dir(tmp_path / "data")
    db = data / "leases.db"
    image = db.read_bytes()
    at = image.index(b"holder-1")
    db.write_bytes(image[:at] + b"H" + image[at + 1 :])  # SQLite itself sees nothing wrong
    line = refused_start(data)
    assert "the row of election 'e1' fails its checksum" in line


def test_a_changed_token_high_water_mark_is_refused(tmp_path: Path):
    data = a_data_dir(tmp_path / "data")
    db = sqlite3.connect(data / "leases.db")
    db.execute("UPDATE meta SET value = 1 WHERE key = 'last_token'")
    db.commit()
    db.close()
    assert "high-water mark" in refused_start(data)


def test_every_committed_batch_is_in_leases_db_itself(tmp_path: Path):
    """What a reply acknowledged survives losing every file beside leases.db (a WAL or a
    journal that a crash left behind): copy the file alone while the store is still open."""
    store = _store.LeaseStore(tmp_path / "data")
    for k in range(50):  # one batch per grant, as acknowledged one by one
        store.write(k + 1, [(f"e{k}", Holder(f"e{k}", "w", k + 1, 5000, b"", 0.0, ""))])
    survivor = tmp_path / "copy"
    survivor.mkdir()
    (survivor / "leases.db").write_bytes((tmp_path / "data" / "leases.db").read_bytes())
    store.close()
    copy = _store.LeaseStore(survivor)
    last_token, holders = copy.load()
    copy.close()
    assert last_token == 50
    assert sorted(h[2] for h in holders) == list(range(1, 51))
