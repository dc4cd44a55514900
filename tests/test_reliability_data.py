"""Reliability of ccledu.data: checksums cannot be bypassed, damaged files give one-line errors.

Each case is a fault a careless user or a hostile file could produce. Library calls must raise
``ValueError`` (``ChecksumError`` is one) with a one-line message; the command line must exit 2
with one ``ccledu: error:`` line and no traceback.
"""
import gzip
import io
import os
import pickle
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest

from ccledu import data as D

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def _no_env(monkeypatch):
    monkeypatch.delenv(D.ENV_VAR, raising=False)


def _fake_mnist(folder, seed=0, n_train=12, n_test=5):
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {"train_x": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
              "train_y": rng.integers(0, 10, n_train).astype(np.uint8),
              "test_x": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
              "test_y": rng.integers(0, 10, n_test).astype(np.uint8)}
    sums = {}
    for key, fname in D.DATASETS["mnist"].splits.items():
        D.write_idx(folder / fname, arrays[key])
        sums[fname] = D.md5sum(folder / fname)
    return arrays, sums


def _swap_same_size(path, new_bytes):
    """Replace a file's content with bytes of the same length and put its mtime back."""
    st = path.stat()
    assert len(new_bytes) == st.st_size
    path.write_bytes(new_bytes)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert path.stat().st_mtime_ns == st.st_mtime_ns and path.stat().st_size == st.st_size


def _tampered_labels(path):
    """The gzipped IDX label file at ``path`` with one label changed, same compressed length."""
    raw = path.read_bytes()
    plain = bytearray(gzip.decompress(raw))
    for k in range(1, 10):
        plain2 = bytearray(plain)
        plain2[-1] = (plain[-1] + k) % 10
        new = gzip.compress(bytes(plain2), mtime=0)
        if len(new) == len(raw):
            return new
    raise AssertionError("could not build a same-size tampered file")


def _one_line(msg):
    assert "\n" not in str(msg).strip(), f"message spans several lines: {msg!r}"
    return str(msg)


# ------------------------------------------------------------------ checksum bypass

def test_same_size_swap_with_mtime_put_back_is_caught_in_the_same_process(tmp_path):
    _, sums = _fake_mnist(tmp_path / "mnist")
    D.load_dataset("mnist", root=tmp_path, checksums=sums)          # a first, verified load
    labels = tmp_path / "mnist" / "train-labels-idx1-ubyte.gz"
    _swap_same_size(labels, _tampered_labels(labels))
    with pytest.raises(D.ChecksumError) as err:
        D.load_dataset("mnist", root=tmp_path, checksums=sums)
    assert str(labels) in _one_line(err.value)


def test_cifar_archive_swapped_after_a_verified_load_is_never_unpickled(tmp_path):
    rng = np.random.default_rng(1)
    imgs = rng.integers(0, 256, (4, 3, 32, 32), dtype=np.uint8)
    (tmp_path / "cifar10").mkdir()
    path = D.write_cifar_archive(tmp_path / "cifar10", "cifar10", imgs, [0, 1, 2, 3], imgs[:2], [4, 5])
    sums = {path.name: D.md5sum(path)}
    D.load_dataset("cifar10", root=tmp_path, checksums=sums)
    marker = tmp_path / "PWNED"

    class Evil:                                       # unpickling this would create the marker
        def __reduce__(self):
            return (Path.touch, (marker,))

    original = path.read_bytes()
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(original))) as t:
        members = [(m, t.extractfile(m).read()) for m in t.getmembers()]
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as t:
        for m, blob in members:
            if m.name.endswith("data_batch_1"):
                blob = pickle.dumps(Evil(), protocol=2)
                m.size = len(blob)
            t.addfile(m, io.BytesIO(blob))
    evil = gzip.compress(buf.getvalue(), mtime=0)
    st = path.stat()                                  # the size may differ: nothing is cached
    path.write_bytes(evil)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    with pytest.raises(D.ChecksumError):
        D.load_dataset("cifar10", root=tmp_path, checksums=sums)
    assert not marker.exists()


def test_parser_sees_exactly_the_bytes_that_were_hashed(tmp_path, monkeypatch):
    """A swap right after the digest (check-then-use race) cannot change what is parsed."""
    arrays, sums = _fake_mnist(tmp_path / "mnist")
    labels = tmp_path / "mnist" / "train-labels-idx1-ubyte.gz"
    real = D.hashlib.md5
    calls = []

    def md5_then_swap(*a):
        h = real(*a)
        calls.append(1)
        if len(calls) == 2:                 # right after the labels file (2nd) was hashed
            labels.write_bytes(_tampered_labels(labels))
        return h

    monkeypatch.setattr(D.hashlib, "md5", md5_then_swap)
    ds = D.load_dataset("mnist", root=tmp_path, checksums=sums)
    assert len(calls) == 4
    assert gzip.decompress(labels.read_bytes()) != gzip.decompress(
        D.write_idx(tmp_path / "orig.gz", arrays["train_y"]).read_bytes())   # the disk changed
    np.testing.assert_array_equal(ds.train_y, arrays["train_y"])             # the data did not


def test_read_cifar_archive_with_md5_checks_before_unpickling(tmp_path, monkeypatch):
    rng = np.random.default_rng(2)
    imgs = rng.integers(0, 256, (2, 3, 32, 32), dtype=np.uint8)
    path = D.write_cifar_archive(tmp_path / "a.tar.gz", "cifar10", imgs, [0, 1], imgs, [1, 0])
    monkeypatch.setattr(pickle, "load", lambda *a, **k: (_ for _ in ()).throw(AssertionError))
    with pytest.raises(D.ChecksumError):
        D.read_cifar_archive(path, "cifar10", md5="0" * 32)


# ------------------------------------------------------------------ damaged files

def _idx_gz(tmp_path, name="f.gz"):
    p = D.write_idx(tmp_path / name, np.arange(600, dtype=np.uint8).reshape(6, 100) % 251)
    return p, p.read_bytes()


@pytest.mark.parametrize("damage,match", [
    (lambda b: b[:len(b) // 2], "gzip stream is damaged"),                    # EOFError
    (lambda b: b[:12] + bytes(x ^ 0x5A for x in b[12:-8]) + b[-8:], "gzip stream is damaged"),  # zlib.error
    (lambda b: b[:3] + b"\xff" + b[4:], "gzip stream is damaged"),            # bad gzip flags
    (lambda b: gzip.compress(gzip.decompress(b)[:6], mtime=0), "truncated"),  # short IDX header
    (lambda b: gzip.compress(gzip.decompress(b)[:-1], mtime=0), "truncated"),  # short data
    (lambda b: gzip.compress(b"\x00\x00\x08\x02" + b"\xff" * 8, mtime=0), "truncated"),  # huge dims
    (lambda b: gzip.compress(b"\x01\x00\x08\x01abc", mtime=0), "not an IDX file"),
    (lambda b: b"", "not an IDX file"),
])
def test_damaged_idx_files_give_one_line_value_errors(tmp_path, damage, match):
    p, raw = _idx_gz(tmp_path)
    p.write_bytes(damage(raw))
    with pytest.raises(ValueError, match=match) as err:
        D.read_idx(p)
    _one_line(err.value)


@pytest.mark.parametrize("damage", ["truncate", "garbage", "not-a-tar"])
def test_damaged_cifar_archive_with_matching_checksum_gives_one_line_error(tmp_path, damage):
    rng = np.random.default_rng(3)
    (tmp_path / "cifar10").mkdir()
    imgs = rng.integers(0, 256, (3, 3, 32, 32), dtype=np.uint8)
    path = D.write_cifar_archive(tmp_path / "cifar10", "cifar10", imgs, [0, 1, 2], imgs, [2, 1, 0])
    raw = path.read_bytes()
    raw = {"truncate": raw[: len(raw) // 2], "garbage": raw[:20] + b"\x00" * (len(raw) - 20),
           "not-a-tar": gzip.compress(b"hello" * 100, mtime=0)}[damage]
    path.write_bytes(raw)
    with pytest.raises(ValueError) as err:
        D.load_dataset("cifar10", root=tmp_path, checksums={path.name: D.md5sum(path)})
    assert "cifar" in _one_line(err.value).lower()


def test_missing_dataset_message_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setattr(D, "CACHE_DIR", tmp_path / "cache")
    monkeypatch.setattr(D, "EMBEDDED_DATA_DIR", tmp_path / "embedded")
    with pytest.raises(FileNotFoundError) as err:
        D.load_dataset("fashion-mnist")
    assert "CCLEDU_DATA" in _one_line(err.value)


# ------------------------------------------------------------------ CCLEDU_DATA fallback

def test_wrong_ccledu_data_says_it_fell_back_to_the_embedded_copy(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(D.ENV_VAR, str(tmp_path / "nowhere"))
    d = D.dataset_dir("mnist")
    assert d == D.EMBEDDED_DATA_DIR / "mnist"
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "CCLEDU_DATA" in err[0] and "embedded copy" in err[0]


def test_right_ccledu_data_says_nothing(tmp_path, monkeypatch, capsys):
    _fake_mnist(tmp_path / "mnist")
    monkeypatch.setenv(D.ENV_VAR, str(tmp_path))
    assert D.dataset_dir("mnist") == tmp_path / "mnist"
    assert capsys.readouterr().err == ""


# ------------------------------------------------------------------ command line

def _cli(args, env_extra=None, cwd=None):
    env = {k: v for k, v in os.environ.items() if k != D.ENV_VAR}
    env.update({"OPENBLAS_NUM_THREADS": "1", **(env_extra or {})})
    return subprocess.run([sys.executable, "-m", "ccledu", *args], capture_output=True, text=True,
                          env=env, cwd=cwd or REPO, timeout=300)


def test_cli_corrupt_dataset_file_exits_2_with_one_line(tmp_path):
    root = tmp_path / "data"
    (root / "mnist").mkdir(parents=True)
    for f in D.DATASETS["mnist"].files:                     # official files, one damaged
        (root / "mnist" / f).write_bytes((D.EMBEDDED_DATA_DIR / "mnist" / f).read_bytes())
    p = root / "mnist" / "t10k-labels-idx1-ubyte.gz"
    raw = bytearray(p.read_bytes())
    raw[-5] ^= 0xFF
    p.write_bytes(bytes(raw))
    r = _cli(["train", "--data-root", str(root), "--epochs", "1", "--limit-train", "32", "--quiet"])
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ccledu: error: checksum mismatch"), r.stderr
    assert "Traceback" not in r.stderr


def test_cli_wrong_ccledu_data_prints_the_fallback_note_and_trains(tmp_path):
    r = _cli(["train", "--epochs", "1", "--limit-train", "64", "--limit-test", "64",
              "--model", "mlp:784-16-10", "--quiet"], env_extra={D.ENV_VAR: str(tmp_path / "no")})
    assert r.returncode == 0, r.stderr
    notes = [ln for ln in r.stderr.splitlines() if "CCLEDU_DATA" in ln]
    assert len(notes) == 1 and "fell back" not in notes[0] and "embedded copy" in notes[0]
    assert r.stdout.strip().startswith("test_accuracy")
