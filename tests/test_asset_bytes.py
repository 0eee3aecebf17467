"""Asset files' bytes in the store of record, on every backend: on PostgreSQL in the database,
a chunk a row, written with the file's row and removed with it, read a chunk at a time (a
large file never whole in memory); on SQLite the data dir's files. And each node's folder as
a cache of the database: a file fetched by a node that lacks it, checked against its hash;
cached files other nodes removed swept; files a node kept on its disk before the database
held bytes (a fleet's database of schema 3) written to it at that node's start."""
from __future__ import annotations

import io
import os
import time
import tracemalloc

import blake3
import pytest

from comfy.inputs.assetfiles import AssetUnavailable
from comfy.inputs.assets import AssetStore
from comfy.jobs.retention import RetentionSweep
from comfy.jobs.store import JobStore
from cylindria.storage import ASSETS_DIR
from cylindria.storage.records import CHUNK_BYTES
from tests.backends import Backend
from tests.test_storage import make_older, run_sql

MIB = 1024 * 1024
DAY = 86400.0


def store_on(storage, folder, max_bytes: int = 64 * MIB) -> AssetStore:
    """A node's asset store: its folder, over the store of record's rows."""
    return AssetStore(folder, storage.assets, max_bytes)


def chunk_rows(backend) -> list[tuple]:
    """(hash, n, length) of every chunk row (PostgreSQL), in order."""
    return run_sql(backend, "SELECT hash, n, length(bytes) FROM asset_chunks ORDER BY hash, n")


def leftovers(assets: AssetStore) -> list[str]:
    """Files being written, left in the folder's .incoming."""
    return [p.name for p in assets.files.incoming.iterdir()]


@pytest.fixture
def fleet(postgres_cluster, tmp_path):
    """A fleet's PostgreSQL database; each node opens it as `fleet.open()`."""
    backend = Backend("postgresql", tmp_path / "data", postgres_cluster)
    yield backend
    backend.close()


def test_a_files_bytes_are_stored_with_its_row_and_leave_with_it(backend):
    storage = backend.open()
    assets = store_on(storage, backend.data_dir / ASSETS_DIR)
    data = os.urandom(2 * CHUNK_BYTES + 1000)
    asset, created = assets.add(io.BytesIO(data), "three-chunks.bin", None)
    again, created_again = assets.add(io.BytesIO(data), "same.bin", None, owner="bob")
    assert created and created_again and again.hash == asset.hash

    chunks = list(storage.assets.read_file(asset.hash))
    assert b"".join(chunks) == data
    assert [len(chunk) for chunk in chunks] == [CHUNK_BYTES, CHUNK_BYTES, 1000]
    unknown = "blake3:" + "0" * 64
    assert storage.assets.stored([asset.hash, unknown]) == {asset.hash: True}
    assert storage.assets.holds_bytes == (backend.kind == "postgresql")
    if backend.kind == "postgresql":  # once, for both owners' assets
        assert chunk_rows(backend) == [(asset.hash, 0, CHUNK_BYTES), (asset.hash, 1, CHUNK_BYTES),
                                       (asset.hash, 2, 1000)]

    jobs = JobStore(storage.jobs)
    assert assets.delete(asset, jobs) == []
    assert b"".join(storage.assets.read_file(asset.hash)) == data  # bob's asset holds it
    assert assets.delete(again, jobs) == []
    assert storage.assets.stored([asset.hash]) == {}
    with pytest.raises(FileNotFoundError):
        list(storage.assets.read_file(asset.hash))
    assert not assets.path(asset).exists()
    if backend.kind == "postgresql":
        assert chunk_rows(backend) == []


def test_a_large_file_goes_in_and_out_a_chunk_at_a_time(backend, tmp_path):
    """A 48 MiB upload and its read back: the memory Python allocates meanwhile stays within a
    few chunks (the whole file would be 48)."""
    size = 48 * CHUNK_BYTES + 5
    source = tmp_path / "large.bin"
    with open(source, "wb") as out:
        for _ in range(49):
            out.write(os.urandom(CHUNK_BYTES))
        out.truncate(size)
    storage = backend.open()
    assets = store_on(storage, backend.data_dir / ASSETS_DIR)
    tracemalloc.start()
    try:
        with open(source, "rb") as stream:
            tracemalloc.reset_peak()
            asset, _ = assets.add(stream, "large.bin", size)
            peak_in = tracemalloc.get_traced_memory()[1]
        tracemalloc.reset_peak()
        hasher, largest = blake3.blake3(), 0
        for chunk in storage.assets.read_file(asset.hash):
            hasher.update(chunk)
            largest = max(largest, len(chunk))
        peak_out = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert asset.size_bytes == size and f"blake3:{hasher.hexdigest()}" == asset.hash
    assert largest == CHUNK_BYTES
    assert peak_in < 6 * CHUNK_BYTES and peak_out < 6 * CHUNK_BYTES, (peak_in, peak_out)


def test_a_node_without_the_file_fetches_it_checked_by_its_hash(fleet, tmp_path):
    """Node c never had the upload to node a: it fetches it from the database (a chunk at a
    time), into place only once whole and of the right hash; bytes changed in the database
    are refused, and nothing is left behind."""
    a = store_on(fleet.open(), tmp_path / "a")
    c = store_on(fleet.open(), tmp_path / "c")
    data = os.urandom(12 * CHUNK_BYTES + 7)
    asset, _ = a.add(io.BytesIO(data), "photo.png", None)
    assert not c.path(asset).exists() and c.available(asset)

    tracemalloc.start()
    try:
        path = c.local(asset)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert path == c.path(asset) and path.read_bytes() == data
    assert peak < 6 * CHUNK_BYTES and leftovers(c) == []
    assert c.local(asset) == path  # cached: no second fetch needed

    run_sql(fleet, "UPDATE asset_chunks SET bytes = set_byte(bytes, 5, 255 - get_byte(bytes, 5)) "
                   "WHERE n = 2")
    d = store_on(fleet.open(), tmp_path / "d")
    with pytest.raises(AssetUnavailable, match="another hash"):
        d.local(asset)
    assert not d.path(asset).exists() and leftovers(d) == []

    run_sql(fleet, "DELETE FROM asset_chunks")  # kept on a's disk only (as before schema 5)
    assert not d.available(asset) and a.available(asset)
    with pytest.raises(AssetUnavailable, match="holds none of its bytes"):
        d.local(asset)
    assert leftovers(d) == []


def test_one_hosts_files_are_its_data_dirs(tmp_path):
    """SQLite: the folder is the store; a file gone from it is gone (nothing to fetch)."""
    backend = Backend("sqlite", tmp_path / "data")
    try:
        storage = backend.open()
        assets = store_on(storage, backend.data_dir / ASSETS_DIR)
        asset, _ = assets.add(io.BytesIO(b"GIF89a one host"), "a.gif", None)
        assert assets.local(asset) == backend.data_dir / ASSETS_DIR / asset.hash[7:]
        assert assets.share_files() == 0
        assets.path(asset).unlink()
        assert storage.assets.stored([asset.hash]) == {asset.hash: False}
        assert not assets.available(asset)
        with pytest.raises(AssetUnavailable):
            assets.local(asset)
    finally:
        backend.close()


def test_cached_files_another_node_removed_leave_with_the_sweep(fleet, tmp_path):
    a = store_on(fleet.open(), tmp_path / "a")
    c = store_on(fleet.open(), tmp_path / "c")
    gone, _ = a.add(io.BytesIO(b"GIF89a deleted on a"), "gone.gif", None)
    kept, _ = a.add(io.BytesIO(b"GIF89a still held"), "kept.gif", None)
    mine, _ = c.add(io.BytesIO(b"GIF89a c's own upload"), "mine.gif", None)
    for asset in (gone, kept):
        c.local(asset)
    assert a.delete(gone, JobStore(fleet.open().jobs)) == []
    assert c.path(gone).exists()  # c's cache does not know yet
    assert c.sweep_files() == 1
    assert not c.path(gone).exists()
    assert c.path(kept).exists() and c.path(mine).exists()


def test_a_version_3_fleet_database_gains_the_bytes_of_its_nodes_files(fleet, tmp_path):
    """A fleet's database of schema 3 (its files' bytes on the disk of the node each was
    uploaded to) is brought to this version; at the start of its retention sweep, a node
    writes the bytes of its files to it, and then any node can use them."""
    storage = fleet.open()
    a = store_on(storage, tmp_path / "a")
    asset, _ = a.add(io.BytesIO(b"\x89PNG\r\n\x1a\n uploaded to a"), "old.png", None)
    storage.close()
    make_older(fleet, 3)
    assert run_sql(fleet, "SELECT to_regclass('asset_chunks') IS NULL") == [(True,)]

    storage = fleet.open()
    assert storage.meta.get("schema_version", "none") == "5"
    c = store_on(fleet.open(), tmp_path / "c")
    assert not c.available(asset)
    a = store_on(storage, tmp_path / "a")
    sweep = RetentionSweep(JobStore(storage.jobs), storage.jobs, DAY, clock=time.time, assets=a)
    try:
        sweep.at_start()
    finally:
        sweep.stop()
    assert c.local(asset).read_bytes() == b"\x89PNG\r\n\x1a\n uploaded to a"
    assert a.share_files() == 0  # once
