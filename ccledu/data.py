"""Datasets: MNIST, Fashion-MNIST, CIFAR-10 and CIFAR-100, from the official files.

What this module does, in the order a training run needs it:

1. **Find** the official files of a dataset (:func:`dataset_dir`). Search order:

   * the ``root=`` argument, when given (a directory holding ``<name>/``, or the files
     themselves);
   * else ``$CCLEDU_DATA/<name>/`` when the environment variable ``CCLEDU_DATA`` is set;
   * the repository's embedded ``data/<name>/`` (MNIST ships with ccledu);
   * the user cache ``~/.cache/ccledu/<name>/``.

   With ``download=True`` missing files are fetched from the official host into the first
   writable choice of that list (``root``, else ``$CCLEDU_DATA``, else the cache).
2. **Verify** every file's MD5 against the official sum *before* it is parsed
   (:func:`read_verified`, raising :class:`ChecksumError`): each file is read into memory once
   and the digest is computed from the very bytes that are then parsed, every time a dataset is
   loaded (no cache). A CIFAR archive is a set of pickles, and unpickling runs code: only the
   verified bytes are ever unpickled.
3. **Parse** them: IDX files (:func:`read_idx`) for the MNIST family, the pickled batches inside
   the ``.tar.gz`` for CIFAR. :func:`load_dataset` returns a :class:`Dataset` of ``uint8`` images
   (N, C, H, W) and ``int64`` labels (N,).
4. **Prepare** float arrays for training (:func:`prepare`): a seeded train/validation split,
   per-channel normalisation x̂ = (x/255 − μ_c)/σ_c, optional zero padding and flattening.
5. **Batch** them (:func:`batches`), optionally with augmentation (:func:`cifar_augment`).

Everything here lives on the host (NumPy). The trainer moves each batch to the current
back-end with :func:`ccledu.backend.asarray`.

The writers :func:`write_idx` and :func:`write_cifar_archive` produce small files in the official
formats, so the readers can be tested without the real data.
"""
from __future__ import annotations

import gzip
import hashlib
import io
import os
import pickle
import tarfile
import sys
import tempfile
import urllib.request
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, NamedTuple

import numpy as np

from .backend import get_array_module, rng as make_rng, resolve_dtype
from .losses import one_hot as losses_one_hot

__all__ = [
    "DATASETS", "DatasetInfo", "Dataset", "Splits", "ChecksumError",
    "EMBEDDED_DATA_DIR", "CACHE_DIR", "ENV_VAR",
    "md5sum", "verify_md5", "read_verified", "dataset_dir", "download_file",
    "read_idx", "write_idx", "read_cifar_archive", "write_cifar_archive",
    "load_dataset", "normalize", "prepare", "batches", "cifar_augment", "one_hot",
]

#: The directory shipped with the repository (``<repo>/data``); holds ``mnist/``.
EMBEDDED_DATA_DIR = Path(__file__).resolve().parent.parent / "data"
#: Where downloads go when neither ``root=`` nor ``$CCLEDU_DATA`` is given.
CACHE_DIR = Path.home() / ".cache" / "ccledu"
#: Environment variable naming a directory with one sub-folder per dataset.
ENV_VAR = "CCLEDU_DATA"


# --------------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class DatasetInfo:
    """Everything ccledu knows about one dataset.

    ``files`` maps each official file name to its MD5 sum; ``url`` is the official directory the
    files are downloaded from (``url + file_name``). ``input_shape`` is (C, H, W); ``mean`` and
    ``std`` hold one value per channel, on the [0, 1] scale (the image divided by 255).
    """
    name: str
    files: dict
    url: str
    num_classes: int
    input_shape: tuple
    class_names: tuple
    mean: tuple
    std: tuple
    format: str                      # "idx" or "cifar"
    splits: dict = field(default_factory=dict)   # idx: which file is which array


_IDX_SPLITS = {
    "train_x": "train-images-idx3-ubyte.gz",
    "train_y": "train-labels-idx1-ubyte.gz",
    "test_x": "t10k-images-idx3-ubyte.gz",
    "test_y": "t10k-labels-idx1-ubyte.gz",
}

_CIFAR100_FINE = (
    "apple aquarium_fish baby bear beaver bed bee beetle bicycle bottle bowl boy bridge bus "
    "butterfly camel can castle caterpillar cattle chair chimpanzee clock cloud cockroach couch "
    "crab crocodile cup dinosaur dolphin elephant flatfish forest fox girl hamster house kangaroo "
    "keyboard lamp lawn_mower leopard lion lizard lobster man maple_tree motorcycle mountain mouse "
    "mushroom oak_tree orange orchid otter palm_tree pear pickup_truck pine_tree plain plate poppy "
    "porcupine possum rabbit raccoon ray road rocket rose sea seal shark shrew skunk skyscraper "
    "snail snake spider squirrel streetcar sunflower sweet_pepper table tank telephone television "
    "tiger tractor train trout tulip turtle wardrobe whale willow_tree wolf woman worm"
).split()

#: The registry. Normalisation constants are the ones the public CCL code uses.
DATASETS: dict[str, DatasetInfo] = {
    "mnist": DatasetInfo(
        name="mnist",
        files={
            "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
            "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
            "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
            "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
        },
        # yann.lecun.com is the original home but is often unreachable; this mirror serves the
        # byte-identical files (same MD5 sums).
        url="https://ossci-datasets.s3.amazonaws.com/mnist/",
        num_classes=10,
        input_shape=(1, 28, 28),
        class_names=tuple(str(i) for i in range(10)),
        mean=(0.1307,),
        std=(0.3081,),
        format="idx",
        splits=dict(_IDX_SPLITS),
    ),
    "fashion-mnist": DatasetInfo(
        name="fashion-mnist",
        files={
            "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
            "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
            "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
            "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
        },
        url="http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
        num_classes=10,
        input_shape=(1, 28, 28),
        class_names=("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                     "Sneaker", "Bag", "Ankle boot"),
        mean=(0.2860,),
        std=(0.3530,),
        format="idx",
        splits=dict(_IDX_SPLITS),
    ),
    "cifar10": DatasetInfo(
        name="cifar10",
        files={"cifar-10-python.tar.gz": "c58f30108f718f92721af3b95e74349a"},
        url="https://www.cs.toronto.edu/~kriz/",
        num_classes=10,
        input_shape=(3, 32, 32),
        class_names=("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                     "ship", "truck"),
        mean=(0.49139968, 0.48215841, 0.44653091),
        std=(0.24703223, 0.24348513, 0.26158784),
        format="cifar",
    ),
    "cifar100": DatasetInfo(
        name="cifar100",
        files={"cifar-100-python.tar.gz": "eb9058c3a382ffc7106e4002c42a8d85"},
        url="https://www.cs.toronto.edu/~kriz/",
        num_classes=100,
        input_shape=(3, 32, 32),
        class_names=tuple(_CIFAR100_FINE),
        mean=(0.50707516, 0.48654887, 0.44091784),
        std=(0.26733429, 0.25643846, 0.27615047),
        format="cifar",
    ),
}

# Layout of the official CIFAR archives: top folder, training members, test member, meta
# member and the key of the label list inside each pickle.
_CIFAR_LAYOUT = {
    "cifar10": dict(folder="cifar-10-batches-py",
                    train=[f"data_batch_{i}" for i in range(1, 6)],
                    test="test_batch", meta="batches.meta", label_key=b"labels"),
    "cifar100": dict(folder="cifar-100-python", train=["train"], test="test", meta="meta",
                     label_key=b"fine_labels"),
}


def lookup(name: str) -> DatasetInfo:
    """The :class:`DatasetInfo` of a dataset name (any common spelling); ValueError if unknown."""
    if isinstance(name, DatasetInfo):
        return name
    key = str(name).strip().lower().replace("_", "-")
    key = {"fashion": "fashion-mnist", "fmnist": "fashion-mnist", "cifar-10": "cifar10",
           "cifar-100": "cifar100"}.get(key, key)
    if key not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; known datasets are: "
                         f"{', '.join(sorted(DATASETS))}")
    return DATASETS[key]


class Dataset(NamedTuple):
    """Raw images and labels as stored in the official files.

    ``train_x``: uint8 (N_train, C, H, W); ``train_y``: int64 (N_train,);
    ``test_x``: uint8 (N_test, C, H, W); ``test_y``: int64 (N_test,); ``info``: the registry entry.
    """
    train_x: np.ndarray
    train_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray
    info: DatasetInfo


class Splits(NamedTuple):
    """Training-ready arrays: ``train``, ``val`` and ``test`` are each a pair ``(x, y)`` with
    x float (N, C, H, W) — or (N, C·H·W) when flattened — and y int64 (N,)."""
    train: tuple
    val: tuple
    test: tuple
    info: DatasetInfo


# --------------------------------------------------------------------------------------------
# Checksums
# --------------------------------------------------------------------------------------------

class ChecksumError(ValueError):
    """A file's MD5 sum differs from the expected one (corrupt, truncated or wrong version)."""


def md5sum(path, chunk_size: int = 1 << 20) -> str:
    """Hex MD5 digest of a file, computed from its bytes on every call.

    Nothing is cached: a cache keyed on (path, size, modification time) can be fooled by a file
    swapped for same-size content with its mtime put back, so every call reads the file.
    """
    h = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(chunk_size), b""):
            h.update(chunk)
    return h.hexdigest()


def _mismatch(path, expected: str, actual: str) -> ChecksumError:
    path = Path(path)
    return ChecksumError(
        f"checksum mismatch for {path}: expected md5 {expected.lower()}, got {actual}. "
        f"The file is corrupt, truncated or not the official version. Fix: delete {path} "
        f"and download it again (load_dataset(..., download=True)) or copy a fresh official "
        f"copy into {path.parent}.")


def verify_md5(path, expected: str) -> None:
    """Raise :class:`ChecksumError` unless ``md5sum(path) == expected``.

    This only says what the file held when it was hashed. To *use* a file, read it with
    :func:`read_verified`, which checks the very bytes it returns.
    """
    actual = md5sum(path)
    if actual != expected.lower():
        raise _mismatch(path, expected, actual)


def read_verified(path, expected: str) -> bytes:
    """The bytes of ``path``, returned only when their MD5 equals ``expected``.

    The file is read once into memory and the digest is computed from those bytes, so what a
    parser later sees is exactly what was checked: a file changed on disk after this call (or
    between two loads in a long-running notebook) cannot slip past the check.
    Raises :class:`ChecksumError` on a mismatch.
    """
    path = Path(path)
    with open(path, "rb") as f:
        blob = f.read()
    actual = hashlib.md5(blob).hexdigest()
    if actual != expected.lower():
        raise _mismatch(path, expected, actual)
    return blob


# --------------------------------------------------------------------------------------------
# Locating and downloading
# --------------------------------------------------------------------------------------------

def _candidate_dirs(info: DatasetInfo, root) -> list[Path]:
    if root is not None:
        root = Path(root).expanduser()
        return [root / info.name, root]
    dirs = []
    env = os.environ.get(ENV_VAR)
    if env:
        dirs.append(Path(env).expanduser() / info.name)
    dirs.append(EMBEDDED_DATA_DIR / info.name)
    dirs.append(CACHE_DIR / info.name)
    return dirs


def _note_fallback(info: DatasetInfo, wanted: Path, used: Path) -> None:
    """One line on stderr: $CCLEDU_DATA was set but does not hold the dataset, so another copy
    (the embedded one, or the cache) is used instead."""
    missing = [f for f in info.files if not (wanted / f).is_file()]
    where = "the embedded copy" if used == EMBEDDED_DATA_DIR / info.name else "the copy"
    print(f"ccledu: note: {ENV_VAR}={os.environ.get(ENV_VAR)} has no {info.name}/ with the "
          f"official files ({wanted} lacks {', '.join(missing)}); using {where} in {used}",
          file=sys.stderr)


def _download_dir(info: DatasetInfo, root) -> Path:
    if root is not None:
        return Path(root).expanduser() / info.name
    env = os.environ.get(ENV_VAR)
    if env:
        return Path(env).expanduser() / info.name
    return CACHE_DIR / info.name


def download_file(url: str, dest, md5: str, timeout: float = 60.0) -> Path:
    """Download ``url`` to ``dest``, verifying its MD5 before it appears under its final name.

    The bytes go to a temporary file in ``dest``'s directory, which is checked and then renamed
    (atomic on one file system), so an interrupted download never leaves a half file behind.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=dest.name + ".", suffix=".part", dir=dest.parent)
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as resp:
            while True:
                chunk = resp.read(1 << 20)
                if not chunk:
                    break
                out.write(chunk)
        verify_md5(tmp, md5)
        os.replace(tmp, dest)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return dest


def dataset_dir(name, root=None, download: bool = False, checksums: dict | None = None) -> Path:
    """The directory holding all official files of dataset ``name`` (see the module docstring
    for the search order). Files are only located here; :func:`load_dataset` verifies them.

    Raises ``FileNotFoundError`` naming the missing files, the directories searched and the fix
    when the files are nowhere and ``download`` is False.
    """
    info = lookup(name)
    sums = {**info.files, **(checksums or {})}
    candidates = _candidate_dirs(info, root)
    for i, d in enumerate(candidates):
        if all((d / f).is_file() for f in info.files):
            if i > 0 and root is None and os.environ.get(ENV_VAR):
                _note_fallback(info, candidates[0], d)
            return d
    if download:
        target = _download_dir(info, root)
        for f in info.files:
            if not (target / f).is_file():
                download_file(info.url + f, target / f, sums[f])
        return target
    searched = "; ".join(str(d) for d in candidates)
    expected = ", ".join(info.files)
    raise FileNotFoundError(
        f"dataset {info.name!r} not found: expected the official files {expected} in one of: "
        f"{searched}. "
        f"Fix: put the files in a folder {info.name}/ under a directory and set {ENV_VAR} to that "
        f"directory (e.g. export {ENV_VAR}=/path/to/data with /path/to/data/{info.name}/...), "
        f"pass root=..., or pass download=True to fetch them from {info.url}")


# --------------------------------------------------------------------------------------------
# IDX format (MNIST, Fashion-MNIST)
# --------------------------------------------------------------------------------------------

# IDX type byte -> big-endian NumPy dtype.
_IDX_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_IDX_CODES = {np.dtype(v).newbyteorder("="): k for k, v in _IDX_TYPES.items()}


def read_idx(source) -> np.ndarray:
    """Read an IDX file (the MNIST format), gzip-compressed or raw.

    Layout: two zero bytes, one type byte (0x08 = uint8, ...), one byte ndim, then ndim
    big-endian uint32 sizes, then the data in C order, big-endian. ``source`` is a path, a
    binary file object or the file's bytes; gzip is recognised by its magic bytes (1f 8b),
    whatever the name. Returns a native-byte-order array of shape (d_1, ..., d_ndim).

    Any damage (a broken gzip stream, a short header, a size that disagrees with the header)
    raises ``ValueError`` with one line naming the file and what is wrong.
    """
    if isinstance(source, (bytes, bytearray, memoryview)):
        raw, label = bytes(source), "<IDX bytes>"
    elif hasattr(source, "read"):
        raw = source.read()
        label = getattr(source, "name", "<file object>")
    else:
        label = str(source)
        with open(source, "rb") as f:
            raw = f.read()
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as e:      # BadGzipFile is an OSError
            raise ValueError(f"{label}: the gzip stream is damaged ({type(e).__name__}: {e}); the "
                             f"file is truncated or corrupt. Fix: delete it and fetch a fresh "
                             f"copy") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_TYPES:
        raise ValueError(f"{label} is not an IDX file: bad magic number {raw[:4].hex()} "
                         f"(expected 0000 + a type byte in {[hex(k) for k in _IDX_TYPES]} + ndim)")
    dtype = np.dtype(_IDX_TYPES[raw[2]])
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"{label}: the IDX header announces {ndim} dimensions but the file ends "
                         f"after {len(raw)} bytes; the file is truncated or corrupt")
    dims = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    expected = int(np.prod(dims, dtype=object)) * dtype.itemsize
    if len(raw) - header != expected:
        raise ValueError(f"{label}: IDX header announces shape {dims} ({expected} data bytes) "
                         f"but the file holds {len(raw) - header}; the file is truncated or "
                         f"corrupt")
    data = np.frombuffer(raw, dtype=dtype, offset=header).reshape(dims)
    return data.astype(dtype.newbyteorder("="))   # native order, writable copy


def write_idx(path, array) -> Path:
    """Write ``array`` as an IDX file (gzip-compressed when ``path`` ends in ``.gz``).

    Supported dtypes: uint8, int8, int16, int32, float32, float64 (the IDX types).
    """
    array = np.asarray(array)
    code = _IDX_CODES.get(array.dtype.newbyteorder("="))
    if code is None:
        raise TypeError(f"IDX cannot store dtype {array.dtype}; use one of uint8, int8, int16, "
                        f"int32, float32, float64")
    header = bytes([0, 0, code, array.ndim]) + np.asarray(array.shape, dtype=">u4").tobytes()
    payload = header + np.ascontiguousarray(array, dtype=_IDX_TYPES[code]).tobytes()
    path = Path(path)
    if path.suffix == ".gz":
        payload = gzip.compress(payload, mtime=0)
    path.write_bytes(payload)
    return path


def _load_idx_dataset(info: DatasetInfo, d: Path, blobs: dict | None = None) -> dict:
    """The four IDX arrays of ``info``; ``blobs`` ({file name: verified bytes}) when given, else
    the files in ``d``."""
    arrays = {}
    for key, fname in info.splits.items():
        src = d / fname
        if blobs is not None:
            src = io.BytesIO(blobs[fname])
            src.name = str(d / fname)
        arrays[key] = read_idx(src)
    out = {}
    for split in ("train", "test"):
        x, y = arrays[f"{split}_x"], arrays[f"{split}_y"]
        if x.ndim != 3 or y.ndim != 1 or len(x) != len(y):
            raise ValueError(f"{d}: {split} images have shape {x.shape} and labels {y.shape}; "
                             f"expected (N, H, W) and (N,) with the same N")
        out[f"{split}_x"] = x.astype(np.uint8, copy=False)[:, None, :, :]
        out[f"{split}_y"] = y.astype(np.int64)
    return out


# --------------------------------------------------------------------------------------------
# CIFAR (pickled batches inside a tar.gz)
# --------------------------------------------------------------------------------------------

def read_cifar_archive(path, kind: str, blob: bytes | None = None, md5: str | None = None) -> dict:
    """Read a CIFAR archive (a ``.tar.gz`` of pickled batches).

    Unpickling runs code, so the pickles must come from bytes whose MD5 was checked: pass the
    verified bytes as ``blob`` (what :func:`load_dataset` does, from :func:`read_verified`), or
    ``md5`` to have the file read and checked here. With neither, ``path`` is read as it is and
    the caller vouches for it. ``path`` names the archive in messages.

    Only the known members are read; each is a pickle of a dict with ``b"data"`` (uint8,
    (n, 3072), channel-major: 1024 red, 1024 green, 1024 blue values of a 32×32 image) and
    ``b"labels"`` (CIFAR-10) or ``b"fine_labels"`` (CIFAR-100). Returns ``train_x``/``test_x``
    uint8 (N, 3, 32, 32) and ``train_y``/``test_y`` int64 (N,). A damaged archive raises
    ``ValueError`` with one line.
    """
    layout = _CIFAR_LAYOUT[lookup(kind).name]
    key = layout["label_key"]
    if blob is None and md5 is not None:
        blob = read_verified(path, md5)

    def member(tar, name):
        try:
            f = tar.extractfile(f"{layout['folder']}/{name}")
        except KeyError:
            raise ValueError(f"{path}: the archive has no member {layout['folder']}/{name}; it "
                             f"is not the official CIFAR python archive") from None
        if f is None:
            raise ValueError(f"{path}: member {layout['folder']}/{name} is not a regular file")
        with f:
            d = pickle.load(f, encoding="bytes")
        if not isinstance(d, dict) or b"data" not in d or key not in d:
            raise ValueError(f"{path}: member {name} does not hold a CIFAR batch (a dict with "
                             f"b'data' and {key!r})")
        x = np.asarray(d[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
        y = np.asarray(d[key], dtype=np.int64).reshape(-1)
        if len(x) != len(y):
            raise ValueError(f"{path}: {name} has {len(x)} images but {len(y)} labels")
        return x, y

    try:
        with (tarfile.open(fileobj=io.BytesIO(blob), mode="r:gz") if blob is not None
              else tarfile.open(path, "r:gz")) as tar:
            parts = [member(tar, n) for n in layout["train"]]
            test_x, test_y = member(tar, layout["test"])
    except (tarfile.TarError, OSError, EOFError, zlib.error, pickle.UnpicklingError) as e:
        raise ValueError(f"{path}: cannot read the CIFAR archive ({type(e).__name__}: {e}); the "
                         f"file is truncated or corrupt. Fix: delete it and fetch a fresh "
                         f"copy") from None
    return dict(train_x=np.concatenate([p[0] for p in parts]),
                train_y=np.concatenate([p[1] for p in parts]),
                test_x=test_x, test_y=test_y)


def write_cifar_archive(path, kind: str, train_images, train_labels, test_images,
                        test_labels) -> Path:
    """Write a (small) archive in the official CIFAR-10 / CIFAR-100 python layout.

    ``*_images``: uint8 (N, 3, 32, 32); ``*_labels``: ints (N,). ``path`` is the archive file, or
    a directory to receive it under its official name. CIFAR-10 training data is spread over
    ``data_batch_1..5`` as evenly as possible; CIFAR-100 coarse labels are written as zeros (the
    readers here use the fine labels only). Returns the archive's path.
    """
    info = lookup(kind)
    if info.format != "cifar":
        raise ValueError(f"write_cifar_archive writes cifar10 or cifar100, not {info.name!r}")
    layout = _CIFAR_LAYOUT[info.name]
    path = Path(path)
    if path.is_dir():
        path = path / next(iter(info.files))

    def batch(images, labels, label):
        images = np.asarray(images, dtype=np.uint8)
        if images.ndim != 4 or images.shape[1:] != (3, 32, 32):
            raise ValueError(f"images must have shape (N, 3, 32, 32), got {images.shape}")
        labels = [int(v) for v in np.asarray(labels).reshape(-1)]
        d = {b"batch_label": label.encode(),
             b"data": images.reshape(len(images), 3 * 32 * 32),
             b"filenames": [f"img_{i:05d}.png".encode() for i in range(len(images))]}
        if info.name == "cifar10":
            d[b"labels"] = labels
        else:
            d[b"fine_labels"] = labels
            d[b"coarse_labels"] = [0] * len(labels)
        return pickle.dumps(d, protocol=2)

    members = {}
    idx = np.array_split(np.arange(len(train_labels)), len(layout["train"]))
    tx, ty = np.asarray(train_images), np.asarray(train_labels)
    for name, ii in zip(layout["train"], idx):
        members[name] = batch(tx[ii], ty[ii], f"training batch {name}")
    members[layout["test"]] = batch(test_images, test_labels, "testing batch")
    if info.name == "cifar10":
        meta = {b"label_names": [c.encode() for c in info.class_names],
                b"num_cases_per_batch": 10000, b"num_vis": 3072}
    else:
        meta = {b"fine_label_names": [c.encode() for c in info.class_names],
                b"coarse_label_names": [b"coarse_%d" % i for i in range(20)]}
    members[layout["meta"]] = pickle.dumps(meta, protocol=2)

    with tarfile.open(path, "w:gz") as tar:
        for name, blob in members.items():
            ti = tarfile.TarInfo(f"{layout['folder']}/{name}")
            ti.size = len(blob)
            tar.addfile(ti, io.BytesIO(blob))
    return path


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------

def load_dataset(name, root=None, download: bool = False, checksums: dict | None = None
                 ) -> Dataset:
    """Load the official train and test sets of ``name`` as uint8 images and int64 labels.

    ``name``: "mnist", "fashion-mnist", "cifar10" or "cifar100". ``root``/``download``: see
    :func:`dataset_dir`. ``checksums``: {file name: md5} overriding the official sums (for test
    files written with :func:`write_idx` / :func:`write_cifar_archive`).

    Every file is read into memory once, its MD5 computed from those bytes and compared before
    they are parsed (:func:`read_verified`); a mismatch raises :class:`ChecksumError`. Nothing is
    cached, so a file replaced on disk between two loads is checked again.
    Returns a :class:`Dataset`: ``train_x`` (N, C, H, W) uint8, ``train_y`` (N,) int64, and the
    same for test.
    """
    info = lookup(name)
    sums = {**info.files, **(checksums or {})}
    d = dataset_dir(info, root=root, download=download, checksums=checksums)
    # Read every file once, hash those bytes, and parse only them (never the file again): what
    # is parsed -- or, for CIFAR, unpickled -- is exactly what was checked.
    blobs = {fname: read_verified(d / fname, sums[fname]) for fname in info.files}
    if info.format == "idx":
        arrays = _load_idx_dataset(info, d, blobs)
    else:
        fname = next(iter(info.files))
        arrays = read_cifar_archive(d / fname, info.name, blob=blobs.pop(fname))
    del blobs
    for split in ("train", "test"):
        x, y = arrays[f"{split}_x"], arrays[f"{split}_y"]
        if x.shape[1:] != info.input_shape:
            raise ValueError(f"{info.name} {split} images have shape {x.shape[1:]}, expected "
                             f"{info.input_shape}")
        if len(y) and (y.min() < 0 or y.max() >= info.num_classes):
            raise ValueError(f"{info.name} {split} labels outside 0..{info.num_classes - 1}")
    return Dataset(arrays["train_x"], arrays["train_y"], arrays["test_x"], arrays["test_y"], info)


# --------------------------------------------------------------------------------------------
# Preparing arrays for training
# --------------------------------------------------------------------------------------------

def normalize(x, mean, std, dtype="float32") -> np.ndarray:
    """x̂[n, c] = (x[n, c] / 255 − mean[c]) / std[c] for uint8 images x of shape (N, C, H, W).

    Computed in ``dtype`` (float32 or float64). Returns a new array.
    """
    dt = resolve_dtype(dtype)
    x = np.asarray(x)
    mean = np.asarray(mean, dtype=dt).reshape(1, -1, 1, 1)
    std = np.asarray(std, dtype=dt).reshape(1, -1, 1, 1)
    if x.ndim != 4 or mean.shape[1] != x.shape[1]:
        raise ValueError(f"normalize expects images (N, C, H, W) with one mean/std per channel; "
                         f"got x {x.shape}, {mean.shape[1]} means")
    out = x.astype(dt)
    out /= dt.type(255)
    out -= mean
    out /= std
    return out


def prepare(dataset: Dataset, val_fraction: float = 0.1, seed=0, dtype="float32",
            flatten: bool = False, pad_to: int | None = None, limit: int | None = None
            ) -> Splits:
    """Turn a :class:`Dataset` into normalised float train / validation / test arrays.

    * Split: the training set is permuted with ``numpy.random.default_rng(seed)``; the first
      round(val_fraction · N) examples of the permutation form the validation set, the rest the
      training set (both in permuted order). Same seed, same split.
    * Padding (``pad_to``, e.g. 32 for 28×28 MNIST): the *raw* uint8 image is padded with 0
      (black) symmetrically, then normalised — the order of torchvision's
      ``Pad`` → ``ToTensor`` → ``Normalize``. Padded pixels therefore equal −μ/σ, the value of
      the MNIST background, not 0.
    * Normalisation: x̂ = (x/255 − μ_c)/σ_c with the registry's per-channel constants.
    * ``flatten=True`` reshapes x to (N, C·H·W) (the MLP input).
    * ``limit`` keeps the first ``limit`` examples of each split after shuffling (quick runs);
      with a limit the test set is also shuffled (seeded) before being cut, so the subset is
      random; without one the test set keeps its official order.

    Arrays stay on the host (NumPy). Returns :class:`Splits` with ``train``, ``val``, ``test``
    = (x, y) pairs, x of ``dtype`` and y int64.
    """
    info = dataset.info
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be a positive number of examples or None, got {limit}")
    gen = make_rng(seed)
    n = len(dataset.train_y)
    perm = gen.permutation(n)
    n_val = int(round(val_fraction * n))
    val_idx, train_idx = perm[:n_val], perm[n_val:]
    test_idx = np.arange(len(dataset.test_y))
    if limit is not None:
        test_idx = gen.permutation(len(dataset.test_y))[:limit]
        train_idx, val_idx = train_idx[:limit], val_idx[:limit]

    def make(x, y, idx):
        x = x[idx]
        if pad_to is not None:
            h, w = x.shape[2:]
            if pad_to < max(h, w):
                raise ValueError(f"pad_to={pad_to} is smaller than the images ({h}×{w})")
            top, left = (pad_to - h) // 2, (pad_to - w) // 2
            x = np.pad(x, ((0, 0), (0, 0), (top, pad_to - h - top), (left, pad_to - w - left)))
        x = normalize(x, info.mean, info.std, dtype)
        if flatten:
            x = x.reshape(len(x), -1)
        return x, y[idx].astype(np.int64)

    return Splits(train=make(dataset.train_x, dataset.train_y, train_idx),
                  val=make(dataset.train_x, dataset.train_y, val_idx),
                  test=make(dataset.test_x, dataset.test_y, test_idx),
                  info=info)


# --------------------------------------------------------------------------------------------
# Batching and augmentation
# --------------------------------------------------------------------------------------------

def batches(x, y, batch_size: int, shuffle: bool = True, rng=None,
            augment: Callable | None = None, drop_last: bool = False
            ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield host mini-batches ``(xb, yb)`` covering ``x`` (N, ...) and ``y`` (N,) once.

    ``shuffle``: visit the examples in an order drawn from ``rng`` (a seed or a
    ``numpy.random.Generator``; pass the same Generator every epoch for a new order each epoch).
    ``augment(xb, rng) -> xb`` is applied to each batch. ``drop_last`` skips a final batch
    smaller than ``batch_size``.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if len(x) != len(y):
        raise ValueError(f"x has {len(x)} examples but y has {len(y)}")
    gen = make_rng(0 if rng is None else rng)
    n = len(y)
    order = gen.permutation(n) if shuffle else None
    stop = n - n % batch_size if drop_last else n
    for start in range(0, stop, batch_size):
        if order is None:
            xb, yb = x[start:start + batch_size], y[start:start + batch_size]
        else:
            idx = order[start:start + batch_size]
            xb, yb = x[idx], y[idx]
        if augment is not None:
            xb = augment(xb, gen)
        yield xb, yb


def cifar_augment(pad: int = 4, flip: bool = True, fill=0.0) -> Callable:
    """The standard CIFAR augmentation: random crop from a zero-padded image + horizontal flip.

    Returns ``augment(xb, rng) -> xb'`` for a batch xb of shape (N, C, H, W). Each sample n is
    padded by ``pad`` pixels on every side with ``fill``, cropped back to H×W at an offset
    (i_n, j_n) drawn uniformly from {0..2·pad}², and mirrored left-right with probability ½::

        xb'[n, c, h, w] = P[n, c, i_n + h, j_n + w']   with w' = W−1−w if flipped else w

    The whole batch is one gather (no Python loop over samples). The offsets and flips are
    drawn from the host ``rng``. ``fill`` is a scalar or one value per channel: batches from
    :func:`prepare` are already normalised, so ``fill=0`` pads with the *mean* colour; to pad
    with black as torchvision does (pad before normalising), pass ``fill = -mean/std``.
    """
    if pad < 0:
        raise ValueError(f"pad must be >= 0, got {pad}")

    def augment(xb, rng):
        xp = get_array_module(xb)
        gen = make_rng(rng)
        n, c, h, w = xb.shape
        if pad:
            padded = xp.empty((n, c, h + 2 * pad, w + 2 * pad), dtype=xb.dtype)
            fill_c = np.broadcast_to(np.asarray(fill, dtype=np.float64).reshape(-1), (c,))
            padded[...] = xp.asarray(fill_c.reshape(1, c, 1, 1), dtype=xb.dtype)
            padded[:, :, pad:pad + h, pad:pad + w] = xb
        else:
            padded = xb
        oi = gen.integers(0, 2 * pad + 1, size=n)
        oj = gen.integers(0, 2 * pad + 1, size=n)
        flips = gen.random(n) < 0.5 if flip else np.zeros(n, dtype=bool)
        rows = oi[:, None] + np.arange(h)[None, :]                       # (N, H)
        cols = np.where(flips[:, None], np.arange(w)[::-1][None, :],
                        np.arange(w)[None, :]) + oj[:, None]             # (N, W)
        ni = np.arange(n)[:, None, None, None]
        ci = np.arange(c)[None, :, None, None]
        return padded[xp.asarray(ni), xp.asarray(ci), xp.asarray(rows[:, None, :, None]),
                      xp.asarray(cols[:, None, None, :])]

    return augment


def one_hot(y, num_classes: int, dtype="float32", xp=None):
    """One-hot matrix Y (N, C) with Y[n, y_n] = 1 and zeros elsewhere.

    ``xp`` defaults to the array module of ``y`` (NumPy or CuPy).
    """
    xp = get_array_module(y) if xp is None else xp
    y = xp.asarray(y).reshape(-1)
    if np.dtype(y.dtype).kind not in "iu":
        raise ValueError(f"labels must be integers 0..{num_classes - 1}, got {y.dtype} values "
                         f"(e.g. y.astype(int) for whole-number floats)")
    if xp is np and len(y) and (y.min() < 0 or y.max() >= num_classes):
        raise ValueError(f"labels must lie in 0..{num_classes - 1}, got min {y.min()} "
                         f"max {y.max()}")
    return losses_one_hot(y, num_classes, dtype, xp)
