"""UnixFS DAG layout identical to Kubo's ``ipfs add``, built incrementally.

:class:`FileBuilder` is fed bytes in any pieces and hands back finished blocks as
soon as they are final, so a caller can stream a multi-GB file to disk holding at
most one chunk plus one pending link list per tree level.

Layout = go-unixfs ``importer/balanced`` (Kubo's default):

- fixed-size chunks (256 KiB), cut exactly every ``chunk_size`` bytes;
- every leaf sits at the same depth ``D``, the smallest with ``174**D >= leaves``;
  internal nodes are filled left to right, 174 links each, so a lone trailing leaf
  is *wrapped in its own internal node* (py-libp2p's ``balanced_layout`` moves it up
  instead, one of the two reasons its CIDs differ from Kubo's; research/ipfs.md D);
- a link's ``Tsize`` is the child's block size plus its own children's Tsizes (raw
  leaves count their real size, not 0 as py-libp2p writes; the other reason);
- a file of one chunk is that chunk's block; an empty file is one empty leaf.

Options: CIDv1 + raw leaves (``ipfs add --cid-version=1``, our default) or CIDv0 with
dag-pb leaves (plain ``ipfs add``, what Kubo v0.22's library produces).

Pure: no file or network I/O; the importer in ``node/storage`` does the reading.
"""

from __future__ import annotations

from dataclasses import dataclass

from .cid import CID, DAG_PB, RAW, cid_for_block, cid_from_bytes
from .dagpb import (
    DIRECTORY,
    FILE,
    HAMT_SHARD,
    MAX_NAME,
    PBLink,
    PBNode,
    UnixFSData,
    decode_node,
    decode_unixfs,
    encode_node,
    encode_unixfs,
)
from .errors import DecodeError, InvalidValue

CHUNK_SIZE = 256 * 1024
MAX_LINKS_PER_NODE = 174
# Largest block we build, serve or accept (Kubo's bitswap limit is 2 MiB; a 256 KiB
# chunk plus framing is far below 1 MiB, so 1 MiB leaves room and bounds memory).
MAX_BLOCK_SIZE = 1024 * 1024
# Plain (non-HAMT) directories: Kubo switches to HAMT shards above ~256 KiB of links,
# roughly 4000 entries; we do not build or read shards, so refuse more entries.
MAX_DIRECTORY_ENTRIES = 4000


@dataclass(frozen=True, slots=True)
class AddOptions:
    cid_version: int = 1
    raw_leaves: bool | None = None  # None: Kubo's rule, raw leaves iff CIDv1
    chunk_size: int = CHUNK_SIZE
    max_links: int = MAX_LINKS_PER_NODE

    def __post_init__(self) -> None:
        if self.cid_version not in (0, 1):
            raise InvalidValue("cid_version must be 0 or 1")
        if self.cid_version == 0 and self.raw_leaves:
            raise InvalidValue("CIDv0 cannot address raw leaves")
        if not 1 <= self.chunk_size <= MAX_BLOCK_SIZE - 1024:
            raise InvalidValue("chunk_size must be between 1 byte and ~1 MiB")
        if not 2 <= self.max_links <= 4096:
            raise InvalidValue("max_links must be between 2 and 4096")

    @property
    def leaves_are_raw(self) -> bool:
        return self.cid_version == 1 if self.raw_leaves is None else self.raw_leaves


@dataclass(frozen=True, slots=True)
class Block:
    cid: CID
    data: bytes


@dataclass(frozen=True, slots=True)
class Entry:
    """What a parent needs to link to a finished sub-DAG."""

    cid: CID
    tsize: int  # cumulative size of the sub-DAG's blocks, as in the parent's link
    filesize: int  # bytes of file content below it


def _node_block(node: PBNode, version: int) -> Block:
    data = encode_node(node)
    return Block(cid_for_block(data, codec=DAG_PB, version=version), data)


class FileBuilder:
    """Streaming balanced-layout builder for one file."""

    def __init__(self, options: AddOptions = AddOptions()) -> None:
        self.options = options
        self._buf = bytearray()
        self._levels: list[list[Entry]] = [[]]  # pending links per depth (0 = leaves)
        self._leaves = 0
        self._finished = False

    def write(self, data: bytes | bytearray | memoryview) -> list[Block]:
        """Feed file bytes; returns the blocks that became final."""
        if self._finished:
            raise RuntimeError("FileBuilder already finished")
        out: list[Block] = []
        size = self.options.chunk_size
        view = memoryview(data)
        while view:
            take = min(size - len(self._buf), len(view))
            self._buf += view[:take]
            view = view[take:]
            if len(self._buf) == size:
                chunk = bytes(self._buf)
                self._buf.clear()
                out.extend(self._add_leaf(chunk))
        return out

    def finish(self) -> tuple[list[Block], Entry]:
        """Flush the last chunk and all pending internal nodes; return them and the root."""
        if self._finished:
            raise RuntimeError("FileBuilder already finished")
        out: list[Block] = []
        if self._buf or self._leaves == 0:
            out.extend(self._add_leaf(bytes(self._buf)))
            self._buf.clear()
        self._finished = True
        if self._leaves == 1:
            return out, self._levels[0][0]
        depth, capacity = 0, 1
        while capacity < self._leaves:
            depth += 1
            capacity *= self.options.max_links
        while len(self._levels) <= depth:
            self._levels.append([])
        for level in range(depth):
            if self._levels[level]:
                out.extend(self._close(level))
        return out, self._levels[depth][0]

    def _add_leaf(self, chunk: bytes) -> list[Block]:
        opts = self.options
        if opts.leaves_are_raw:
            block = Block(cid_for_block(chunk, codec=RAW, version=1), chunk)
        else:
            unixfs = UnixFSData(FILE, chunk or None, len(chunk))
            block = _node_block(PBNode((), encode_unixfs(unixfs)), opts.cid_version)
        self._leaves += 1
        return [block, *self._push(0, Entry(block.cid, len(block.data), len(chunk)))]

    def _push(self, level: int, entry: Entry) -> list[Block]:
        """Append to a level; a full level is closed only when one more entry arrives,
        because only then is it certain the tree must grow past it (Go checks db.Done())."""
        out: list[Block] = []
        if len(self._levels[level]) == self.options.max_links:
            out.extend(self._close(level))
        self._levels[level].append(entry)
        return out

    def _close(self, level: int) -> list[Block]:
        children = self._levels[level]
        self._levels[level] = []
        unixfs = UnixFSData(FILE, None, sum(c.filesize for c in children), tuple(c.filesize for c in children))
        node = PBNode(tuple(PBLink(c.cid.to_bytes(), "", c.tsize) for c in children), encode_unixfs(unixfs))
        block = _node_block(node, self.options.cid_version)
        entry = Entry(block.cid, len(block.data) + sum(c.tsize for c in children), unixfs.filesize or 0)
        if len(self._levels) == level + 1:
            self._levels.append([])
        return [block, *self._push(level + 1, entry)]


def build_file(data: bytes, options: AddOptions = AddOptions()) -> tuple[list[Block], Entry]:
    """Whole-bytes convenience for tests and small payloads."""
    builder = FileBuilder(options)
    blocks = builder.write(data)
    tail, root = builder.finish()
    return blocks + tail, root


def check_entry_name(name: str) -> str:
    """A directory entry name that is one path component on every OS: no ``/``, no ``\\``
    (a separator on Windows), no NUL, not ``.``/``..`` (path tricks, issue 12)."""
    if (not name or name in (".", "..") or any(c in name for c in "/\\\x00")
            or len(name.encode("utf-8")) > MAX_NAME):
        raise InvalidValue(f"invalid directory entry name {name[:40]!r}")
    return name


def build_directory(entries: dict[str, Entry], options: AddOptions = AddOptions()) -> tuple[Block, Entry]:
    """A plain UnixFS directory node; links sorted by name as go-merkledag encodes them."""
    if len(entries) > MAX_DIRECTORY_ENTRIES:
        raise InvalidValue(f"directory has more than {MAX_DIRECTORY_ENTRIES} entries (HAMT not supported)")
    names = sorted(entries, key=lambda n: check_entry_name(n).encode("utf-8"))
    links = tuple(PBLink(entries[n].cid.to_bytes(), n, entries[n].tsize) for n in names)
    block = _node_block(PBNode(links, encode_unixfs(UnixFSData(DIRECTORY))), options.cid_version)
    tsize = len(block.data) + sum(link.tsize for link in links)
    return block, Entry(block.cid, tsize, sum(e.filesize for e in entries.values()))


# --------------------------------------------------------------------------- reading


@dataclass(frozen=True, slots=True)
class NodeView:
    """A decoded block, as needed to walk and export a UnixFS DAG."""

    kind: str  # "raw" | "file" | "directory"
    data: bytes  # file content carried by this block itself (leaves)
    links: tuple[tuple[str, CID], ...]  # (name, child) in order
    filesize: int | None = None


def read_block(cid: CID, data: bytes) -> NodeView:
    """Interpret a verified block; raises :class:`DecodeError` for anything we cannot export."""
    if cid.codec == RAW:
        return NodeView("raw", data, (), len(data))
    node = decode_node(data)
    if node.data is None:
        raise DecodeError("dag-pb node without UnixFS data")
    unixfs = decode_unixfs(node.data)
    links = tuple((link.name, cid_from_bytes(link.hash)) for link in node.links)
    if unixfs.type == DIRECTORY:
        if len(links) > MAX_DIRECTORY_ENTRIES:
            raise DecodeError("directory has too many entries")
        for name, _ in links:
            try:
                check_entry_name(name)
            except InvalidValue as exc:
                raise DecodeError(str(exc)) from None
        return NodeView("directory", b"", links)
    if unixfs.type == HAMT_SHARD:
        raise DecodeError("HAMT-sharded directories are not supported")
    if unixfs.type in (FILE, 0):  # 0 = Raw, used by old go-ipfs leaves
        if len(links) > MAX_LINKS_PER_NODE * 8:
            raise DecodeError("file node fan-out too large")
        return NodeView("file", unixfs.data or b"", links, unixfs.filesize)
    raise DecodeError(f"unsupported UnixFS node type {unixfs.type}")


def child_cids(cid: CID, data: bytes) -> list[CID]:
    """Children of a block (for fetching a whole DAG), without the UnixFS checks."""
    if cid.codec == RAW:
        return []
    return [cid_from_bytes(link.hash) for link in decode_node(data).links]
