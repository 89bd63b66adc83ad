"""The whole-store check behind `realize fsck`: the blob cache's own check (manifests, chunks
re-hashed, counters), then every Unreal file of the index against the manifests."""

from __future__ import annotations

import os

from nfsd.store.areas import AreaTable
from nfsd.store.blobs import BlobStore
from nfsd.store.db import Store
from nfsd.store.index import AreaIndex, Kind, Layer


def check_store(store: Store, blobs: BlobStore, repair: bool) -> tuple[list[str], bool]:
    """Report lines for the user, and whether everything is sound."""
    report = blobs.fsck(repair=repair)
    lines = list(report.lines())
    index = AreaIndex(store)
    orphans = 0
    for area in AreaTable(store):
        for path, entry in index.walk(area.id):
            if (
                entry.layer == Layer.UNREAL
                and entry.kind == Kind.FILE
                and blobs.manifest(entry.blob) is None
            ):
                orphans += 1
                lines.append(f"  unreal file without a manifest: {area.name}/{os.fsdecode(path)}")
    lines.append(
        f"index: {orphans} Unreal files whose content is unknown"
        if orphans
        else "index: every Unreal file has its manifest"
    )
    return lines, report.ok and not orphans
