"""The store's memory stays bounded however much is written: RocksDB's memtables of every
family together stay under `MEMTABLES_BYTES` (flushed to tables, nothing lost), and the
families share one block cache of `BLOCK_CACHE_BYTES` instead of a 32 MiB cache each."""

from __future__ import annotations

import os
from pathlib import Path

from nfsd.store.db import BLOCK_CACHE_BYTES, FAMILIES, MEMTABLES_BYTES, Store

VALUE = 200  # bytes, about an index entry's


def _memtables(store: Store) -> int:
    return sum(
        store.family(name).property_int_value("rocksdb.size-all-mem-tables") for name in FAMILIES
    )


def test_memtables_stay_bounded_and_lose_nothing(tmp_path: Path) -> None:
    store = Store(tmp_path / "db")
    written: dict[str, list[bytes]] = {"entries": [], "inodes": [], "history": []}
    total = 0
    peak = 0
    while total < 2 * MEMTABLES_BYTES:  # the default 64 MiB memtables would hold it all
        for name, keys in written.items():
            batch = store.batch()
            for _ in range(1000):
                key = os.urandom(16)
                batch.put(name, key, key * (VALUE // 16))
                keys.append(key)
            batch.commit()
            total += 1000 * (16 + VALUE)
        peak = max(peak, _memtables(store))
    assert peak <= MEMTABLES_BYTES * 1.25, f"memtables held {peak / 1e6:.1f} MB"
    store.close()

    store = Store(tmp_path / "db")
    try:
        for name, keys in written.items():
            values = store.family(name).get(keys[::97])
            assert values == [key * (VALUE // 16) for key in keys[::97]]
    finally:
        store.close()


def test_families_share_one_block_cache(tmp_path: Path) -> None:
    store = Store(tmp_path / "db")
    try:
        for name in FAMILIES:
            store.family(name)[b"k"] = b"v"
            store.family(name).flush()
        for name in FAMILIES:
            assert store.family(name)[b"k"] == b"v"  # read from a table, through the cache
        capacities = {
            store.family(name).property_int_value("rocksdb.block-cache-capacity")
            for name in FAMILIES
        }
        usages = {
            store.family(name).property_int_value("rocksdb.block-cache-usage") for name in FAMILIES
        }
        assert capacities == {BLOCK_CACHE_BYTES}
        assert len(usages) == 1 and usages.pop() > 0  # one cache, seen from every family
    finally:
        store.close()
