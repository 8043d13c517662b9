"""Proof that two copies of an image folder's split hold the same data, from what the files hold.

The trainer and the teacher server each hold a copy of a split (``ROOT/train``), perhaps on two
hosts at different paths; they exchange view recipes (sample index + crop) instead of pixels and
key stored teacher answers by the data's fingerprint, so a sample index must name the same bytes on
both sides. A ``Manifest`` lists the split's image files in the order torchvision's ImageFolder
numbers its samples (its own ``find_classes`` and ``make_dataset``), each with its size and sha256;
its ``fingerprint`` covers the class names and every (relative path, size, digest), and nothing
about where the folder sits or when its files were written.

sha256, not blake2b: OpenSSL's sha256 uses the CPU's SHA instructions (x86 since 2017, ARMv8) and
hashes 110 KB files at about 1.37 GB/s a core here, blake2b at 0.72 GB/s. Both sides must use
the same hash, so it is fixed (and named in the fingerprint).

Reading 140 GB (ImageNet's train) again at every start would take many minutes, so digests are
cached in a plain data file (a fixed layout, never pickle): a file is read again only when its
(size, mtime_ns, ctime_ns, inode) changed since it was hashed (ctime too: it catches an edit whose
mtime was put back, as ``touch -r`` or some copy tools do).

Two copies that disagree find their first differing file with about log2(N) exchanges of range
digests (``first_difference``), each small enough for an RPC.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import secrets
import sys
import time
from array import array
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Iterator, NamedTuple, Union

from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes, make_dataset

from common import cache_dir

log = logging.getLogger("common.manifest")

HASH = "sha256"
DIGEST_SIZE = hashlib.new(HASH).digest_size
FORMAT = "unixkd-manifest/1"
"""Named in the fingerprint and in cache files: a change of layout changes both."""
CACHE_NAME = ".unixkd-manifest"
"""The cache's name inside the split folder (ImageFolder only looks inside class folders)."""
RACY_NS = 2_000_000_000
"""A file changed less than this before it was hashed is not cached: a second write within the same
timestamp tick (a jiffy on ext4, up to 2 s on FAT, server-set on NFS) would leave its stat as it was."""
MAGIC = b"UNIXKD-MANIFEST-CACHE\n"
STAT_COLUMNS = ("q", "q", "q", "Q")
"""``Stat``'s fields as a cache file holds them: a column each of 8-byte ints, in this machine's byte order."""
WHOLE_FILE = 1 << 24
"""Files up to this size (16 MiB) are read in one call; larger ones a chunk at a time."""
WORKERS = 4
"""Files read at once: reads and sha256 release the GIL, and several reads in flight hide disk latency."""

CacheArg = Union[bool, str, os.PathLike]


class Entry(NamedTuple):
    """One file of a split: its path in the split folder (posix), its size in bytes, the hex sha256 of its bytes."""
    path: str
    size: int
    digest: str


class Stat(NamedTuple):
    """What must be unchanged since a file was hashed for its cached digest to be used."""
    size: int
    mtime_ns: int
    ctime_ns: int
    inode: int


def _stat(st: os.stat_result) -> Stat:
    return Stat(st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)


def list_split(root: str) -> tuple[list[str], list[tuple[str, str, int]]]:
    """The classes and (absolute path, relative posix path, label) of every image, in ImageFolder's order.

    torchvision's own functions, so the order is ImageFolder's whatever its version; a missing folder or
    a class folder without images is one FileNotFoundError line, as ImageFolder refuses them too."""
    top = os.path.abspath(root)
    if not os.path.isdir(top):
        raise FileNotFoundError(f"{top}: no such folder")
    try:
        classes, class_to_idx = find_classes(top)
        samples = make_dataset(top, class_to_idx, extensions=IMG_EXTENSIONS)
    except FileNotFoundError as e:
        raise FileNotFoundError(f"{top}: {e}".strip()) from None
    cut = len(os.path.join(top, ""))
    return classes, [(path, path[cut:].replace(os.sep, "/"), label) for path, label in samples]


def hash_file(path: str) -> tuple[bytes, Stat]:
    """The file's sha256 and its stat when read; one ValueError line if it vanished, cannot be read, or
    changed while it was read."""
    try:
        with open(path, "rb", buffering=0) as f:
            before = _stat(os.fstat(f.fileno()))
            if before.size <= WHOLE_FILE:  # one read, no buffer to clear: 15% faster for ImageNet's files
                data = f.readall()
                digest, read = hashlib.new(HASH, data).digest(), len(data)
            else:
                digest, read = hashlib.file_digest(f, HASH).digest(), f.tell()
            after = _stat(os.fstat(f.fileno()))
    except FileNotFoundError:
        raise ValueError(f"{path} vanished after its folder was listed; build the manifest again") from None
    except OSError as e:
        raise ValueError(f"cannot read {path}: {e.strerror or e}") from None
    if before != after or read != before.size:
        raise ValueError(f"{path} changed while it was read ({before.size:,} bytes before, {read:,} read, "
                         f"{after.size:,} after); build the manifest again once it is written")
    return digest, before


def _unstattable(path: str, error: OSError) -> str:
    """The line for a listed file that cannot be stat'ed: a broken link, gone since the listing, or other."""
    if os.path.islink(path) and not os.path.exists(path):
        return f"{path} is a link to {os.readlink(path)}, which does not exist"
    if isinstance(error, FileNotFoundError):
        return f"{path} vanished after its folder was listed; build the manifest again"
    return f"cannot stat {path}: {error.strerror or error}"


def hash_files(paths: list[str], workers: int = WORKERS) -> Iterator[tuple[bytes, Stat]]:
    """``hash_file`` of each path, in order, ``workers`` at a time; a few hundred queued at once (not a
    million futures), and the first error stops the rest."""
    if workers <= 1:
        yield from map(hash_file, paths)
        return
    with ThreadPoolExecutor(workers) as pool:
        chunk = 64 * workers
        for start in range(0, len(paths), chunk):
            yield from pool.map(hash_file, paths[start:start + chunk])


# --- the cache: digests by relative path, with the stat each was taken at -------------------------

def cache_paths(root: str, cache: CacheArg) -> list[Path]:
    """Where the cache of ``root`` is looked for and written, in order. ``cache`` True: inside the split
    folder, else the user's cache (``common.cache_dir.CACHE_DIR``) keyed by the absolute root; a path: that file."""
    if cache is False:
        return []
    if cache is not True:
        return [Path(cache)]
    key = hashlib.sha256(root.encode("utf-8", "surrogateescape")).hexdigest()[:24]
    return [Path(root) / CACHE_NAME, Path(cache_dir.CACHE_DIR) / "manifests" / f"{key}.manifest"]


class Digests(NamedTuple):
    """What a cache file holds: relative paths, the stat each file had when hashed, their digests back to back."""
    paths: list[str]
    stats: list[tuple[int, int, int, int]]
    digests: bytes

    def index(self) -> dict[str, int]:
        return {path: i for i, path in enumerate(self.paths)}

    def digest(self, i: int) -> bytes:
        return self.digests[i * DIGEST_SIZE:(i + 1) * DIGEST_SIZE]


NO_DIGESTS = Digests([], [], b"")


def encode_cache(root: str, cached: Digests) -> bytes:
    """The file's bytes: MAGIC, a JSON header line, the paths (each ending in NUL), the stats a column at a
    time (``STAT_COLUMNS``), the digests. A fixed layout, nothing executed when read (no pickle), and fast:
    1.28 M entries are read back in about 1.5 s (JSON took 12 s)."""
    paths = ("\0".join(cached.paths) + "\0" if cached.paths else "").encode("utf-8", "surrogateescape")
    header = json.dumps({"format": FORMAT, "hash": HASH, "root": root, "files": len(cached.paths),
                         "path_bytes": len(paths), "byteorder": sys.byteorder}).encode()
    columns = [array(code, [stat[k] for stat in cached.stats]).tobytes() for k, code in enumerate(STAT_COLUMNS)]
    return b"".join([MAGIC, header, b"\n", paths, *columns, cached.digests])


def decode_cache(data: bytes, root: str) -> Digests:
    """``encode_cache``'s inverse; ValueError (or KeyError, TypeError) for anything but a whole cache of ``root``."""
    if not data.startswith(MAGIC):
        raise ValueError("it is not a manifest cache")
    end = data.index(b"\n", len(MAGIC))
    header = json.loads(data[len(MAGIC):end])
    if not isinstance(header, dict) or header.get("format") != FORMAT or header.get("hash") != HASH \
            or header.get("byteorder") != sys.byteorder:
        raise ValueError(f"it is not a {FORMAT} cache of {HASH} digests in {sys.byteorder}-endian order")
    if header.get("root") != root:
        raise ValueError(f"it is the cache of {header.get('root')!r}")
    files, path_bytes = int(header["files"]), int(header["path_bytes"])
    at = end + 1 + path_bytes
    expected = at + files * (8 * len(STAT_COLUMNS) + DIGEST_SIZE)
    if files < 0 or path_bytes < 0 or len(data) != expected:
        raise ValueError(f"it holds {len(data):,} bytes, not the {expected:,} its header says")
    paths = data[end + 1:at].decode("utf-8", "surrogateescape").split("\0")
    if len(paths) != files + 1 or paths.pop() != "":
        raise ValueError(f"it names {len(paths) - 1:,} paths, not the {files:,} its header says")
    columns = []
    for code in STAT_COLUMNS:
        columns.append(array(code, data[at:at + 8 * files]).tolist())
        at += 8 * files
    return Digests(paths, list(zip(*columns)), data[at:])


def _newest_first(paths: list[Path]) -> list[Path]:
    """``paths`` that exist, the last written first (a read-only cache beside the data may be older than
    the one written in the user's cache instead)."""
    found = []
    for path in paths:
        with contextlib.suppress(OSError):
            found.append((-path.stat().st_mtime_ns, len(found), path))
    return [path for *_, path in sorted(found)]


def load_cache(paths: list[Path], root: str) -> tuple[Digests, Path | None]:
    """The newest of ``paths`` that holds a cache of ``root``, and its entries (none, and None: none does).
    A damaged or foreign file is one log line and is passed over (the digests are taken again)."""
    for path in _newest_first(paths):
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            continue
        except OSError as e:
            log.warning("manifest cache %s cannot be read (%s); passed over", path, e.strerror or e)
            continue
        try:
            return decode_cache(data, root), path
        except (ValueError, TypeError, KeyError) as e:
            log.warning("manifest cache %s ignored, the files are read again: %s", path, str(e)[:200])
    return NO_DIGESTS, None


def save_cache(paths: list[Path], root: str, cached: Digests) -> Path | None:
    """Writes the cache to the first of ``paths`` that takes it (tmp + os.replace: readers see the old file
    or the new, whole); None, with one log line, when none does: the manifest is right without it."""
    data = encode_cache(root, cached)
    for path in paths:
        tmp = path.with_name(f"{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_bytes(data)
            os.replace(tmp, path)
            return path
        except OSError as e:
            with contextlib.suppress(OSError):
                tmp.unlink()
            log.debug("manifest cache %s not written: %s", path, e)
    if paths:
        log.warning("manifest cache of %s not written (tried %s); the next start reads every file again",
                    root, ", ".join(map(str, paths)))
    return None


# --- the manifest -------------------------------------------------------------------------------

def _leaf(path: str, size: int, digest: bytes) -> bytes:
    """One entry's own digest: range digests and the fingerprint hash these, 32 bytes an entry."""
    return hashlib.sha256(path.encode("utf-8", "surrogateescape") + b"\0" + size.to_bytes(8, "little")
                          + digest).digest()


class Manifest:
    """A split's image files in ImageFolder's order, with sizes and sha256 digests (kept in columns: about
    165 bytes an entry, 210 MB for ImageNet's 1.28 M files); built with ``Manifest.build``."""

    def __init__(self, root: str, classes: list[str], paths: list[str], labels: list[int], sizes: list[int],
                 digests: bytes, hashed: int = 0, cache_file: Path | None = None):
        self.root, self.name, self.classes = root, os.path.basename(root), tuple(classes)
        self.paths, self.labels, self.sizes = tuple(paths), array("i", labels), array("q", sizes)
        self.digests = digests
        self.hashed = hashed
        """How many files this build read (the others' digests came from the cache)."""
        self.cache_file = cache_file
        self._leaves: bytes | None = None
        self._fingerprint: str | None = None

    @classmethod
    def build(cls, root: str | os.PathLike, cache: CacheArg = True, workers: int = WORKERS) -> "Manifest":
        """The manifest of the split folder ``root``, reading only files whose stat changed since the cache
        saw them. ``cache``: True (inside ``root`` if writable, else the user's cache), a file, or False."""
        top = os.path.abspath(root)
        classes, samples = list_split(top)
        places = cache_paths(top, cache)
        cached, loaded_from = load_cache(places, top)
        known = cached.index()
        stats: list[Stat | None] = [None] * len(samples)
        digests: list[bytes | None] = [None] * len(samples)
        stale = []
        for i, (path, rel, _) in enumerate(samples):
            try:
                stats[i] = _stat(os.stat(path))
            except OSError as e:
                raise ValueError(_unstattable(path, e)) from None
            j = known.get(rel)
            if j is not None and cached.stats[j] == stats[i]:
                digests[i] = cached.digest(j)
            else:
                stale.append(i)
        started = time.time_ns()
        for i, (digest, stat) in zip(stale, hash_files([samples[i][0] for i in stale], workers)):
            digests[i], stats[i] = digest, stat
        written = loaded_from
        if places and (stale or len(samples) - len(stale) != len(cached.paths)):
            keep = [i for i in range(len(samples)) if started - stats[i].mtime_ns >= RACY_NS]
            written = save_cache(places, top, Digests([samples[i][1] for i in keep], [stats[i] for i in keep],
                                                      b"".join(digests[i] for i in keep)))
        manifest = cls(top, classes, [s[1] for s in samples], [s[2] for s in samples],
                       [s.size for s in stats], b"".join(digests), hashed=len(stale), cache_file=written)
        log.info("manifest of %s: %s files, %s read, %s from the cache %s", top, f"{len(samples):,}",
                 f"{len(stale):,}", f"{len(samples) - len(stale):,}", written or "(none)")
        return manifest

    def __len__(self) -> int:
        return len(self.paths)

    def entry(self, index: int) -> Entry:
        """The ``index``-th file (a plain tuple: what an RPC for ``first_difference`` returns)."""
        if not 0 <= index < len(self):
            raise IndexError(f"entry {index} of a manifest of {len(self):,} files")
        return Entry(self.paths[index], self.sizes[index], self._digest(index).hex())

    def _digest(self, index: int) -> bytes:
        return self.digests[index * DIGEST_SIZE:(index + 1) * DIGEST_SIZE]

    def __iter__(self) -> Iterator[Entry]:
        return (self.entry(i) for i in range(len(self)))

    @property
    def leaves(self) -> bytes:
        """Every entry's own 32-byte digest, back to back (computed once: about 3 s for ImageNet's 1.28 M)."""
        if self._leaves is None:
            self._leaves = b"".join(_leaf(path, size, self._digest(i))
                                    for i, (path, size) in enumerate(zip(self.paths, self.sizes)))
        return self._leaves

    @property
    def fingerprint(self) -> str:
        """sha256 over the format, the class names (so the labels) and every entry (path, size, digest):
        equal on two hosts exactly when they hold the same files, wherever they sit and whatever their times."""
        if self._fingerprint is None:
            header = json.dumps({"format": FORMAT, "hash": HASH, "classes": list(self.classes),
                                 "files": len(self)}, sort_keys=True).encode()
            digest = hashlib.sha256(header + b"\0")
            digest.update(self.leaves)
            self._fingerprint = digest.hexdigest()
        return self._fingerprint

    def range_digest(self, start: int, count: int) -> tuple[str, int]:
        """(hex sha256 of the entries in [start, start + count) that exist, how many entries there are):
        what the other side's ``first_difference`` asks for, an RPC of two ints and a string back."""
        if start < 0 or count < 0:
            raise ValueError(f"range_digest({start}, {count}): start and count must be >= 0")
        first, last = min(start, len(self)), min(start + count, len(self))
        leaves = memoryview(self.leaves)[DIGEST_SIZE * first:DIGEST_SIZE * last]
        return hashlib.sha256(leaves).hexdigest(), len(self)


# --- the first difference between two copies --------------------------------------------------

RangeDigest = Callable[[int, int], tuple[str, int]]
"""The other side's ``Manifest.range_digest``: (start, count) -> (hex digest, its number of files)."""
EntryAt = Callable[[int], tuple[str, int, str]]
"""The other side's ``Manifest.entry``: index -> (relative path, size, hex digest)."""


def first_difference(local: Manifest, remote_range_digest: RangeDigest, remote_entry: EntryAt,
                     remote: str = "the teacher") -> str | None:
    """One line naming the first file where this copy and the remote one differ, or None when every entry
    agrees (compare fingerprints first: equal fingerprints need no search). Asks the remote side for about
    log2(N) + 1 range digests and one or two entries, so each callable can be an RPC returning plain types."""
    digest, remote_count = remote_range_digest(0, len(local))
    shared = min(len(local), remote_count)
    if digest != local.range_digest(0, shared)[0]:
        lo, hi = 0, shared  # [0, lo) agrees; the first difference lies in [lo, hi)
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if remote_range_digest(lo, mid - lo)[0] == local.range_digest(lo, mid - lo)[0]:
                lo = mid
            else:
                hi = mid
        index = lo
    elif remote_count == len(local):
        return None
    else:
        index = shared
    return describe(local, index, remote_count, remote_entry, remote)


def describe(local: Manifest, index: int, remote_count: int, remote_entry: EntryAt,
             remote: str = "the teacher") -> str:
    """The line for ``index``, the first entry where the two sides differ: a file that differs, or one that
    is missing on one side (asks the remote side for its entry there, and perhaps the next)."""
    here = local.entry(index) if index < len(local) else None
    there = Entry(*remote_entry(index)) if index < remote_count else None
    counts = "" if remote_count == len(local) else \
        f"{remote} has {remote_count:,} files, this side {len(local):,}: "
    name = f"{local.name}/" if local.name else ""
    if here is None:
        return f"{counts}{name}{there.path} is missing here"
    if there is None:
        return f"{counts}{name}{here.path} is missing on {remote}"
    if here.path == there.path:
        return (f"{counts}{name}{here.path} differs: {here.size:,} bytes {HASH} {here.digest[:12]}.. here, "
                f"{there.size:,} bytes {there.digest[:12]}.. on {remote}")
    if there.path in local.paths[index + 1:]:  # this side has files before the remote's next one
        return f"{counts}{name}{here.path} is missing on {remote}"
    if there.path not in local.paths:
        after = remote_entry(index + 1)[0] if index + 1 < remote_count else None
        place = "" if after == here.path else f" (this side has {name}{here.path} in its place)"
        return f"{counts}{name}{there.path} is missing here{place}"
    return f"{counts}file {index:,} is {name}{here.path} here and {name}{there.path} on {remote}"
