"""Result storage for Prefect task results: where a run's cached chunks live.

`--result-storage` (or PREFECT_RESULTS_DEFAULT_STORAGE_BLOCK) may be a local path, an fsspec
URL (s3://, gs://...) or the slug of a saved storage block; every Ray node must reach it (a
run on several hosts checks that before computing), and its cache locks must exclude across
hosts (tasks.common.StorageLockManager keeps them next to the results).
"""
from __future__ import annotations

import os
from pathlib import Path

def make_result_storage(location: str | os.PathLike):
    """A Prefect filesystem for task results: a local path, an fsspec URL (s3://, gs://...),
    or the slug of a saved storage block (`local-file-system/x`, `remote-file-system/x`,
    loaded with Block.load). Its cache locks are checked to exclude across hosts."""
    import hashlib

    from prefect.filesystems import LocalFileSystem, RemoteFileSystem
    location = str(location)
    if is_block_slug(location):
        block = load_storage_block(location)
        check_storage_locks(block)
        return block
    if "://" in location and not location.startswith("file://"):
        block = RemoteFileSystem(basepath=location)
    else:
        path = Path(location.removeprefix("file://")).expanduser().resolve()
        path.mkdir(parents=True, exist_ok=True)
        location = str(path)
        block = LocalFileSystem(basepath=location)
    # Prefect requires result storage to be a saved block; name it after its location.
    name = "tournament-results-" + hashlib.sha256(location.encode()).hexdigest()[:10]
    block.save(name, overwrite=True)
    check_storage_locks(block)
    return block


def check_storage_reaches_all_nodes(location: str, *, shared: bool = False) -> None:
    """Refuse a node-local result path on a multi-host cluster (it would split the cache).

    A local path is fine when every alive node runs on the driver's host, or when the user
    declares it a shared mount (`shared=True`, e.g. NFS). fsspec URLs are always fine.
    """
    import socket

    import ray

    from tournament.errors import ConfigError
    if "://" in location and not location.startswith("file://"):
        return
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    hosts = {n.get("NodeManagerHostname") or n.get("NodeManagerAddress") for n in nodes}
    here = {socket.gethostname(), "127.0.0.1", ray.util.get_node_ip_address()}
    foreign = hosts - here
    if len(nodes) > 1 and foreign and not shared:
        raise ConfigError(
            f"config error: result storage {location!r} is a local path but the Ray cluster has "
            f"{len(nodes)} nodes on other hosts ({', '.join(sorted(map(str, foreign)))}); a local "
            "path would split the cache per node. Use a shared path with --shared-storage, or an "
            "fsspec URL such as s3://bucket/tournament")


# ----------------------------------------------------------------------------- result storage
# Storage block types whose slug `<type>/<name>` --result-storage accepts (loaded with
# Block.load). Types from collections (s3-bucket from prefect-aws, ...) are listed so that a
# missing collection is reported, not read as a local path.
STORAGE_BLOCK_TYPES = ("local-file-system", "remote-file-system", "smb", "s3-bucket",
                       "gcs-bucket", "azure-blob-storage", "minio-credentials")


def is_block_slug(spec: str) -> bool:
    """`<block type slug>/<name>` of a storage block (a path that exists is a path)."""
    import re
    if "://" in spec or not re.fullmatch(r"[a-z0-9][a-z0-9-]*/[A-Za-z0-9][A-Za-z0-9_.-]*", spec):
        return False
    if Path(spec).exists():
        return False
    kind = spec.split("/", 1)[0]
    if kind in STORAGE_BLOCK_TYPES:
        return True
    from prefect.blocks.core import Block
    from prefect.utilities.dispatch import get_registry_for_type
    return kind in (get_registry_for_type(Block) or {})


def default_result_storage(fallback: str) -> str:
    """`--result-storage` when none is given: PREFECT_RESULTS_DEFAULT_STORAGE_BLOCK (a block
    slug) when set, else `fallback` (a local path)."""
    from prefect.settings import PREFECT_RESULTS_DEFAULT_STORAGE_BLOCK
    return PREFECT_RESULTS_DEFAULT_STORAGE_BLOCK.value() or fallback


def load_storage_block(slug: str):
    """Block.load a storage block by slug; one-line errors for the usual mistakes."""
    from prefect.blocks.core import Block

    from tournament.errors import ConfigError
    try:
        block = Block.load(slug)
    except ValueError as exc:
        raise ConfigError(f"config error: result storage {slug!r}: {str(exc).splitlines()[0]} "
                          "(save the block first, or write ./"
                          f"{slug} for a local path)") from None
    except Exception as exc:  # noqa: BLE001 - e.g. the block's collection is not installed
        raise ConfigError(f"config error: result storage {slug!r} could not be loaded: "
                          f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
                          ) from None
    if not (hasattr(block, "write_path") and hasattr(block, "read_path")):
        raise ConfigError(f"config error: result storage {slug!r} is a {type(block).__name__}, "
                          "not a storage (filesystem) block")
    return block


def storage_url(block) -> str:
    """Where a storage block writes: its local path or fsspec URL (for checks and locks)."""
    from prefect.filesystems import LocalFileSystem
    base = str(getattr(block, "basepath", "") or "")
    if isinstance(block, LocalFileSystem):
        return str(Path(base.removeprefix("file://") or ".").expanduser().resolve())
    return base


def check_storage_locks(block) -> None:
    """The cache locks of this storage exclude across hosts (a probe for fsspec stores)."""
    from tasks.common import FsspecLockStore, LockStoreError, lock_store_for

    from tournament.errors import ConfigError
    try:
        store = lock_store_for(block)
        if isinstance(store, FsspecLockStore):
            store.check_exclusive()
    except LockStoreError as exc:
        raise ConfigError(f"config error: {exc}") from None
