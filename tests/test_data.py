"""ccledu.data: formats, checksums, locating files, preparing splits, batching, augmentation."""
import os
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest

from ccledu import data as D

SHARED = Path("/work/shared/data")
MNIST_TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
MNIST_TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


@pytest.fixture(autouse=True)
def _no_env(monkeypatch):
    """Tests choose their data root explicitly; a user's CCLEDU_DATA must not leak in."""
    monkeypatch.delenv(D.ENV_VAR, raising=False)


@pytest.fixture(scope="module")
def mnist():
    return D.load_dataset("mnist")


def _small_images(rng, n, shape):
    return rng.integers(0, 256, size=(n, *shape), dtype=np.uint8)


# ---------------------------------------------------------------------------- IDX

@pytest.mark.parametrize("suffix", ["", ".gz"])
@pytest.mark.parametrize("dtype", [np.uint8, np.int32, np.float32, np.float64])
def test_idx_round_trip(tmp_path, suffix, dtype):
    a = (np.arange(2 * 3 * 5) - 7).astype(dtype).reshape(2, 3, 5)
    if dtype == np.uint8:
        a = np.arange(30, dtype=np.uint8).reshape(2, 3, 5)
    path = D.write_idx(tmp_path / f"a.idx{suffix}", a)
    raw = path.read_bytes()
    assert (raw[:2] == b"\x1f\x8b") == (suffix == ".gz")
    b = D.read_idx(path)
    assert b.dtype == a.dtype and b.shape == a.shape
    np.testing.assert_array_equal(a, b)
    with open(path, "rb") as f:                       # file objects work too
        np.testing.assert_array_equal(D.read_idx(f), a)


def test_idx_header_is_official_format(tmp_path):
    D.write_idx(tmp_path / "l.idx", np.array([3, 1, 4], dtype=np.uint8))
    raw = (tmp_path / "l.idx").read_bytes()
    assert raw == bytes([0, 0, 8, 1, 0, 0, 0, 3, 3, 1, 4])   # magic 2049, count 3 (big-endian)


def test_idx_bad_magic_and_truncation(tmp_path):
    (tmp_path / "x").write_bytes(b"\x01\x02\x03\x04rest")
    with pytest.raises(ValueError, match="not an IDX file"):
        D.read_idx(tmp_path / "x")
    D.write_idx(tmp_path / "t", np.zeros((4, 4), dtype=np.uint8))
    (tmp_path / "t").write_bytes((tmp_path / "t").read_bytes()[:-3])
    with pytest.raises(ValueError, match="truncated"):
        D.read_idx(tmp_path / "t")


def _write_fake_mnist(folder, rng, n_train=12, n_test=5):
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {"train_x": _small_images(rng, n_train, (28, 28)),
              "train_y": rng.integers(0, 10, n_train).astype(np.uint8),
              "test_x": _small_images(rng, n_test, (28, 28)),
              "test_y": rng.integers(0, 10, n_test).astype(np.uint8)}
    sums = {}
    for key, fname in D.DATASETS["mnist"].splits.items():
        D.write_idx(folder / fname, arrays[key])
        sums[fname] = D.md5sum(folder / fname)
    return arrays, sums


def test_idx_dataset_from_root_with_own_checksums(tmp_path):
    arrays, sums = _write_fake_mnist(tmp_path / "fashion-mnist", np.random.default_rng(0))
    ds = D.load_dataset("fashion-mnist", root=tmp_path, checksums=sums)
    assert ds.train_x.shape == (12, 1, 28, 28) and ds.train_x.dtype == np.uint8
    assert ds.train_y.dtype == np.int64
    np.testing.assert_array_equal(ds.train_x[:, 0], arrays["train_x"])
    np.testing.assert_array_equal(ds.test_y, arrays["test_y"])
    assert ds.info.name == "fashion-mnist" and ds.info.num_classes == 10


def test_ccledu_data_env_var(tmp_path, monkeypatch):
    arrays, sums = _write_fake_mnist(tmp_path / "mnist", np.random.default_rng(1))
    monkeypatch.setenv(D.ENV_VAR, str(tmp_path))
    ds = D.load_dataset("mnist", checksums=sums)
    assert len(ds.train_y) == 12                      # the env dir wins over the embedded copy


# ---------------------------------------------------------------------------- CIFAR

@pytest.mark.parametrize("kind,classes", [("cifar10", 10), ("cifar100", 100)])
def test_cifar_archive_round_trip(tmp_path, kind, classes):
    rng = np.random.default_rng(2)
    trx, tex = _small_images(rng, 7, (3, 32, 32)), _small_images(rng, 3, (3, 32, 32))
    try_, tey = rng.integers(0, classes, 7), rng.integers(0, classes, 3)
    folder = tmp_path / kind
    folder.mkdir()
    path = D.write_cifar_archive(folder, kind, trx, try_, tex, tey)
    assert path.name == next(iter(D.DATASETS[kind].files))
    ds = D.load_dataset(kind, root=tmp_path, checksums={path.name: D.md5sum(path)})
    assert ds.train_x.shape == (7, 3, 32, 32) and ds.test_x.shape == (3, 3, 32, 32)
    assert ds.train_x.dtype == np.uint8 and ds.train_y.dtype == np.int64
    np.testing.assert_array_equal(ds.train_x, trx)
    np.testing.assert_array_equal(ds.train_y, try_)
    np.testing.assert_array_equal(ds.test_x, tex)
    np.testing.assert_array_equal(ds.test_y, tey)
    # the archive has the official member names
    with tarfile.open(path) as tar:
        names = set(tar.getnames())
    folder_name = {"cifar10": "cifar-10-batches-py", "cifar100": "cifar-100-python"}[kind]
    assert f"{folder_name}/{'test_batch' if kind == 'cifar10' else 'test'}" in names


def test_cifar_wrong_checksum_rejected_before_unpickling(tmp_path, monkeypatch):
    rng = np.random.default_rng(3)
    path = D.write_cifar_archive(tmp_path, "cifar10", _small_images(rng, 2, (3, 32, 32)),
                                 [0, 1], _small_images(rng, 1, (3, 32, 32)), [2])

    def forbidden(*args, **kwargs):
        raise AssertionError("the archive was opened before its checksum was verified")

    monkeypatch.setattr(pickle, "load", forbidden)
    monkeypatch.setattr(tarfile, "open", forbidden)
    with pytest.raises(D.ChecksumError) as err:
        D.load_dataset("cifar10", root=tmp_path)      # official md5 != our small archive
    msg = str(err.value)
    assert str(path) in msg and "c58f30108f718f92721af3b95e74349a" in msg
    assert "download" in msg


def test_corrupted_byte_raises_checksum_error(tmp_path):
    arrays, sums = _write_fake_mnist(tmp_path / "mnist", np.random.default_rng(4))
    target = tmp_path / "mnist" / "t10k-labels-idx1-ubyte.gz"
    blob = bytearray(target.read_bytes())
    blob[-5] ^= 0xFF
    target.write_bytes(bytes(blob))
    with pytest.raises(D.ChecksumError) as err:
        D.load_dataset("mnist", root=tmp_path, checksums=sums)
    msg = str(err.value)
    assert isinstance(err.value, ValueError)
    assert str(target) in msg and sums[target.name] in msg and D.md5sum(target) in msg
    assert "delete" in msg and "download=True" in msg


def test_md5_is_recomputed_on_every_call(tmp_path, monkeypatch):
    f = tmp_path / "f"
    f.write_bytes(b"abc")
    first = D.md5sum(f)
    calls = []
    real = D.hashlib.md5
    monkeypatch.setattr(D.hashlib, "md5", lambda *a: calls.append(1) or real(*a))
    assert D.md5sum(f) == first and calls             # no cache: hashed again
    st = f.stat()
    f.write_bytes(b"abd")                             # same size, other content, mtime put back
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert D.md5sum(f) != first


def test_missing_dataset_gives_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr(D, "CACHE_DIR", tmp_path / "cache")
    with pytest.raises(FileNotFoundError) as err:
        D.load_dataset("cifar100")
    msg = str(err.value)
    assert "cifar-100-python.tar.gz" in msg
    assert str(tmp_path / "cache" / "cifar100") in msg
    assert "CCLEDU_DATA" in msg and "download=True" in msg
    with pytest.raises(FileNotFoundError, match="train-images-idx3-ubyte.gz"):
        D.load_dataset("fashion-mnist", root=tmp_path)


def test_download_is_called_for_missing_files(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(D, "download_file",
                        lambda url, dest, md5: calls.append((url, Path(dest), md5)))
    d = D.dataset_dir("cifar10", root=tmp_path, download=True)
    assert d == tmp_path / "cifar10"
    assert calls == [("https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
                      tmp_path / "cifar10" / "cifar-10-python.tar.gz",
                      "c58f30108f718f92721af3b95e74349a")]


def test_unknown_dataset_lists_known_names():
    with pytest.raises(ValueError) as err:
        D.load_dataset("svhn")
    for name in ("mnist", "fashion-mnist", "cifar10", "cifar100"):
        assert name in str(err.value)


def test_registry_contents():
    assert D.DATASETS["cifar100"].class_names[:3] == ("apple", "aquarium_fish", "baby")
    assert len(D.DATASETS["cifar100"].class_names) == 100
    assert D.DATASETS["cifar10"].mean == (0.49139968, 0.48215841, 0.44653091)
    assert D.DATASETS["fashion-mnist"].std == (0.3530,)
    for info in D.DATASETS.values():
        assert len(info.mean) == len(info.std) == info.input_shape[0]
        assert len(info.class_names) == info.num_classes
        assert all(len(m) == 32 for m in info.files.values())


# ---------------------------------------------------------------------------- real MNIST

def test_embedded_mnist(mnist):
    assert mnist.train_x.shape == (60000, 1, 28, 28) and mnist.test_x.shape == (10000, 1, 28, 28)
    assert mnist.train_x.dtype == np.uint8 and mnist.train_y.dtype == np.int64
    assert np.bincount(mnist.train_y).tolist() == MNIST_TRAIN_COUNTS
    assert np.bincount(mnist.test_y).tolist() == MNIST_TEST_COUNTS


def test_prepare_split_and_normalisation(mnist):
    s = D.prepare(mnist)
    (xt, yt), (xv, yv), (xs, ys) = s.train, s.val, s.test
    assert xt.shape == (54000, 1, 28, 28) and xv.shape == (6000, 1, 28, 28)
    assert xs.shape == (10000, 1, 28, 28)
    assert xt.dtype == np.float32 and yt.dtype == np.int64
    assert abs(float(xt.mean())) < 0.01 and abs(float(xt.std()) - 1.0) < 0.01
    # the split partitions the training set: all 60000 labels are used exactly once
    counts = np.bincount(np.concatenate([yt, yv]), minlength=10)
    assert counts.tolist() == MNIST_TRAIN_COUNTS
    np.testing.assert_array_equal(ys, mnist.test_y)               # test keeps official order


def test_prepare_is_seeded_and_options(mnist):
    a = D.prepare(mnist, seed=5, limit=100)
    b = D.prepare(mnist, seed=5, limit=100)
    c = D.prepare(mnist, seed=6, limit=100)
    np.testing.assert_array_equal(a.val[1], b.val[1])
    np.testing.assert_array_equal(a.train[0], b.train[0])
    assert not np.array_equal(a.train[1], c.train[1])
    assert len(a.train[1]) == len(a.val[1]) == len(a.test[1]) == 100

    padded = D.prepare(mnist, pad_to=32, limit=10)
    x = padded.train[0]
    assert x.shape == (10, 1, 32, 32)
    border = -0.1307 / 0.3081                                     # a black pixel, normalised
    np.testing.assert_allclose(x[:, :, :2, :], border, rtol=1e-6)
    np.testing.assert_allclose(x[:, :, :, -2:], border, rtol=1e-6)
    np.testing.assert_allclose(x[:, :, 2:30, 2:30], D.prepare(mnist, limit=10).train[0],
                               rtol=1e-6)

    flat = D.prepare(mnist, flatten=True, limit=10, dtype="float64")
    assert flat.train[0].shape == (10, 784) and flat.train[0].dtype == np.float64


def test_fashion_mnist_from_shared_dir(monkeypatch):
    if not (SHARED / "fashion-mnist").is_dir():
        pytest.skip(f"{SHARED}/fashion-mnist is not present on this machine "
                    f"(set CCLEDU_DATA to a directory holding fashion-mnist/ to run this test)")
    monkeypatch.setenv(D.ENV_VAR, str(SHARED))
    ds = D.load_dataset("fashion-mnist")
    assert ds.train_x.shape == (60000, 1, 28, 28) and ds.test_x.shape == (10000, 1, 28, 28)
    assert np.bincount(ds.train_y).tolist() == [6000] * 10
    assert np.bincount(ds.test_y).tolist() == [1000] * 10


# ---------------------------------------------------------------------------- batching

def test_batches_cover_everything_once():
    x = np.arange(23 * 2).reshape(23, 2)
    y = np.arange(23)
    out = list(D.batches(x, y, 5, shuffle=True, rng=np.random.default_rng(0)))
    assert [len(b[1]) for b in out] == [5, 5, 5, 5, 3]
    ys = np.concatenate([b[1] for b in out])
    assert sorted(ys.tolist()) == list(range(23)) and ys.tolist() != list(range(23))
    for xb, yb in out:
        np.testing.assert_array_equal(xb[:, 0], 2 * yb)
    out = list(D.batches(x, y, 5, shuffle=False, drop_last=True))
    assert [len(b[1]) for b in out] == [5, 5, 5, 5]
    assert np.concatenate([b[1] for b in out]).tolist() == list(range(20))


def test_batches_apply_augment():
    x = np.zeros((4, 1, 2, 2))
    out = list(D.batches(x, np.arange(4), 2, shuffle=False, augment=lambda xb, r: xb + 1))
    assert all((xb == 1).all() for xb, _ in out)


def test_cifar_augment_shapes_and_pure_flip():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 3, 8, 8)).astype(np.float32)
    aug = D.cifar_augment(pad=4)
    y = aug(x, np.random.default_rng(1))
    assert y.shape == x.shape and y.dtype == x.dtype
    assert (y == 0).any()                                 # some zero padding came in

    flip_only = D.cifar_augment(pad=0)
    y = flip_only(x, np.random.default_rng(2))
    flipped = [np.array_equal(y[n], x[n, :, :, ::-1]) for n in range(len(x))]
    same = [np.array_equal(y[n], x[n]) for n in range(len(x))]
    assert all(f or s for f, s in zip(flipped, same))
    assert 10 < sum(flipped) < 54                         # about half are mirrored
    # the same generator state gives the same augmentation
    np.testing.assert_array_equal(y, flip_only(x, np.random.default_rng(2)))


def test_cifar_augment_crop_is_a_shift():
    x = np.arange(2 * 1 * 6 * 6, dtype=np.float64).reshape(2, 1, 6, 6) + 1
    aug = D.cifar_augment(pad=2, flip=False, fill=-1.0)
    y = aug(x, np.random.default_rng(7))
    for n in range(2):
        # every output is a 6x6 window of the padded image
        p = np.pad(x[n, 0], 2, constant_values=-1.0)
        windows = [p[i:i + 6, j:j + 6] for i in range(5) for j in range(5)]
        assert any(np.array_equal(y[n, 0], w) for w in windows)


def test_one_hot():
    y = np.array([2, 0, 1])
    Y = D.one_hot(y, 4, dtype="float64")
    np.testing.assert_array_equal(Y, np.eye(4)[[2, 0, 1]])
    assert Y.dtype == np.float64
    with pytest.raises(ValueError, match="labels must lie"):
        D.one_hot(np.array([4]), 4)
    with pytest.raises(ValueError, match="labels must be integers 0..3, got float64"):
        D.one_hot(np.array([1.5, 2.0]), 4)       # used to give a row of zeros for 1.5
