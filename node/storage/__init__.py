"""Model weights as content-addressed IPFS data: block store, import/export, serving
(``/mosaic/blocks/1`` and bitswap with the Kubo fix), DHT providers, multi-provider fetch.

See docs/storage.md.
"""

from .blockstore import BlockMismatch, BlockStore, MissingBlock, Pin, StorageError
from .exporter import export
from .fetch import FetchError, FetchStats, fetch_dag
from .importer import import_path
from .service import Published, StorageService, ensure_local

__all__ = [
    "BlockMismatch",
    "BlockStore",
    "FetchError",
    "FetchStats",
    "MissingBlock",
    "Pin",
    "Published",
    "StorageError",
    "StorageService",
    "ensure_local",
    "export",
    "fetch_dag",
    "import_path",
]
