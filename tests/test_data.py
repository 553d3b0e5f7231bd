"""fpcore.data: exact corpus figures, root resolution, every bad-input case, downloads, batching."""

from __future__ import annotations

import hashlib
import io
import os
import stat
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
import torch

from fpcore import data, files
from fpcore.data import CorpusSpec, DataError, FileSpec, LMBatches, batchify, load_corpus

needs_shared = pytest.mark.skipif(
    not (data.SHARED_DATA / "ptb" / "train.txt").exists(),
    reason=f"the corpora are read from {data.SHARED_DATA} (../shared/data beside the checkout)",
)

# -------------------------------------------------------------------------------------------
# The real corpora: figures must come out exactly (../shared/data/SOURCES.md)
# -------------------------------------------------------------------------------------------
FIGURES = {
    "ptb": (10_000, (929_589, 73_760, 82_430), (42_068, 3_370, 3_761)),
    "wikitext-2": (33_278, (2_088_628, 217_646, 245_569), (36_718, 3_760, 4_358)),
}


@needs_shared
@pytest.mark.parametrize("name", FIGURES)
def test_word_level_figures_are_exact(name):
    corpus = load_corpus(name)
    vocab, tokens, lines = FIGURES[name]
    assert corpus.vocab_size == vocab
    assert tuple(t.numel() for t in corpus.splits().values()) == tokens
    assert tuple(s["lines"] for s in corpus.stats().values()) == lines
    for split in corpus.splits().values():
        assert split.dtype == torch.long and split.dim() == 1
        assert split[-1].item() == corpus.stoi["<eos>"]
    assert corpus.root == data.SHARED_DATA.resolve()


@needs_shared
def test_ptb_char_is_derived_from_the_word_level_files():
    words, chars = load_corpus("ptb"), load_corpus("ptb-char")
    # Derivation: per line, sum of word lengths (<unk> counts 1) + (words - 1) boundaries + 1 <eos>.
    text = (data.SHARED_DATA / "ptb" / "valid.txt").read_text()
    expected = sum(
        sum(1 if w == "<unk>" else len(w) for w in line.split()) + max(len(line.split()) - 1, 0) + 1
        for line in text.splitlines()
    )
    assert chars.valid.numel() == expected == 379_102
    assert (chars.train.numel(), chars.test.numel()) == (4_837_402, 423_247)
    assert chars.vocab_size == 49  # 46 characters, '_', <unk>, <eos>
    assert {"_", "<unk>", "<eos>"} <= set(chars.vocab)
    assert chars.decode(chars.train[:14]) == "a e r _ b a n k n o t e _ b"
    # Lines agree one to one with the word-level corpus.
    assert chars.stats()["train"]["lines"] == words.stats()["train"]["lines"] == 42_068


@needs_shared
def test_second_load_is_cached_and_env_root_is_honoured(monkeypatch):
    assert load_corpus("ptb") is load_corpus("ptb")
    monkeypatch.setenv("FPCORE_DATA_DIR", str(data.SHARED_DATA))
    assert data.find_root("ptb") == (data.SHARED_DATA, "FPCORE_DATA_DIR")
    assert data.find_root("ptb", "/elsewhere") == (Path("/elsewhere"), "argument")


@needs_shared
def test_shared_data_is_found_beside_the_checkout(monkeypatch):
    monkeypatch.delenv("FPCORE_DATA_DIR", raising=False)
    assert data.find_root("wikitext-2") == (data.SHARED_DATA, "shared")


def test_unknown_corpus_is_a_value_error():
    with pytest.raises(ValueError, match="unknown corpus 'ptb2'"):
        load_corpus("ptb2")


# -------------------------------------------------------------------------------------------
# Tiny fixtures for every bad-input case
# -------------------------------------------------------------------------------------------
TRAIN = " the cat sat\n the dog sat on the mat \n"
VALID = " the cat\n"
TEST = " a dog\n"  # "a" is not in train: maps to <unk> only if the vocabulary has one


def _spec_for(src: Path, texts: dict[str, bytes], name="tiny", urls=False, aliases=False) -> CorpusSpec:
    files = {}
    for split, raw in texts.items():
        path = src / name / f"{split}.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(raw)
        files[split] = FileSpec(
            f"{name}/{split}.txt",
            hashlib.sha256(raw).hexdigest(),
            len(raw),
            (path.as_uri(),) if urls else (),
            (f"{name}.{split}.txt",) if aliases else (),
        )
    return CorpusSpec(name, files)


@pytest.fixture
def tiny(tmp_path):
    texts = {"train": (TRAIN + " a\n").encode(), "valid": VALID.encode(), "test": TEST.encode()}
    return _spec_for(tmp_path / "src", texts, urls=True), tmp_path / "src"


def test_tiny_corpus_loads_with_vocab_from_train(tiny):
    spec, root = tiny
    corpus = load_corpus(spec, root)
    assert corpus.vocab == ["the", "cat", "sat", "<eos>", "dog", "on", "mat", "a"]
    assert corpus.decode(corpus.test) == "a dog <eos>"
    assert torch.equal(corpus.encode(" the mat\n"), torch.tensor([0, 6, 3]))


def test_out_of_vocabulary_without_unk_is_a_data_error(tmp_path):
    spec = _spec_for(tmp_path, {"train": TRAIN.encode(), "valid": VALID.encode(), "test": TEST.encode()})
    with pytest.raises(DataError, match=r"tiny/test: token 'a' is not in the training vocabulary"):
        load_corpus(spec, tmp_path)


def test_out_of_vocabulary_maps_to_unk_when_there_is_one(tmp_path):
    spec = _spec_for(tmp_path, {"train": b" <unk> x\n", "valid": b" y\n", "test": b" x\n"})
    corpus = load_corpus(spec, tmp_path)
    assert corpus.decode(corpus.valid) == "<unk> <eos>"


def _corrupt(path: Path, how: str) -> None:
    raw = path.read_bytes()
    if how == "missing":
        path.unlink()
    elif how == "empty":
        path.write_bytes(b"")
    elif how == "truncated":
        path.write_bytes(raw[: len(raw) // 2])
    elif how == "longer":
        path.write_bytes(raw + b"extra\n")
    elif how == "wrong sha256":
        path.write_bytes(raw.replace(b"cat", b"cot"))  # same size, other bytes


@pytest.mark.parametrize(
    "how, says",
    [
        ("missing", "file not found"),
        ("empty", "file is empty"),
        ("truncated", r"file is truncated \(\d+ of \d+ bytes\)"),
        ("longer", r"file has \d+ bytes, not \d+"),
        ("wrong sha256", "sha256 is [0-9a-f]{64}"),
    ],
)
def test_every_bad_file_raises_data_error_naming_file_hash_and_fix(tiny, how, says):
    spec, root = tiny
    path = root / "tiny" / "valid.txt"
    _corrupt(path, how)
    with pytest.raises(DataError, match=says) as info:
        load_corpus(spec, root)
    message = str(info.value)
    assert str(path) in message
    assert spec.files["valid"].sha256 in message
    assert "FPCORE_DATA_DIR" in message and "data/README.md" in message


def test_undecodable_bytes_raise_data_error(tmp_path):
    raw = b" caf\xe9 au lait\n"  # latin-1, not UTF-8; registered with its own hash so only decoding fails
    spec = _spec_for(tmp_path, {"train": raw, "valid": raw, "test": raw})
    with pytest.raises(DataError, match=r"train.txt: not valid UTF-8 \(byte 4") as info:
        load_corpus(spec, tmp_path)
    assert spec.files["train"].sha256 in str(info.value)


def test_file_replaced_on_disk_is_read_again(tiny):
    spec, root = tiny
    load_corpus(spec, root)
    _corrupt(root / "tiny" / "test.txt", "truncated")
    with pytest.raises(DataError, match="truncated"):
        load_corpus(spec, root)


def test_original_file_names_are_accepted(tmp_path):
    spec = _spec_for(
        tmp_path / "a",
        {"train": TRAIN.encode() + b" a\n", "valid": VALID.encode(), "test": TEST.encode()},
        aliases=True,
    )
    for split in ("train", "valid", "test"):  # move tiny/train.txt -> tiny/tiny.train.txt
        src = tmp_path / "a" / "tiny" / f"{split}.txt"
        src.rename(src.parent / f"tiny.{split}.txt")
    assert load_corpus(spec, tmp_path / "a").train.numel() == 13  # 3+1, 6+1, 1+1 tokens


# -------------------------------------------------------------------------------------------
# The user cache and downloads
# -------------------------------------------------------------------------------------------
@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.delenv("FPCORE_DATA_DIR", raising=False)
    monkeypatch.setenv("FPCORE_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_download_into_cache_is_verified(tiny, cache):
    spec, _ = tiny
    assert data.find_root(spec) == (cache, "cache")
    corpus = load_corpus(spec)
    assert corpus.root == cache.resolve()
    assert sorted(p.name for p in (cache / "tiny").iterdir()) == ["test.txt", "train.txt", "valid.txt"]


def test_corrupt_download_leaves_nothing_in_the_cache(tiny, cache):
    spec, root = tiny
    _corrupt(root / "tiny" / "train.txt", "wrong sha256")  # the "server" now serves other bytes
    with pytest.raises(DataError, match="could not download it") as info:
        load_corpus(spec)
    assert "sha256 is" in str(info.value) and spec.files["train"].sha256 in str(info.value)
    assert not (cache / "tiny").exists() or not any((cache / "tiny").iterdir())


def test_interrupted_download_leaves_nothing_in_the_cache(tiny, cache, monkeypatch):
    spec, _ = tiny

    class Broken(io.BytesIO):
        def read(self, n=-1):
            if self.tell():
                raise ConnectionResetError("connection reset by peer")
            return super().read(4)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    monkeypatch.setattr(urllib.request, "urlopen", lambda url, timeout: Broken(b"0123456789" * 10))
    with pytest.raises(DataError, match="connection reset by peer"):
        load_corpus(spec)
    leftovers = list(cache.rglob("*")) if cache.exists() else []
    assert [p for p in leftovers if p.is_file()] == []


def test_corrupt_file_in_cache_says_delete_it(tiny, cache):
    spec, _ = tiny
    load_corpus(spec)
    _corrupt(cache / "tiny" / "valid.txt", "wrong sha256")
    with pytest.raises(DataError, match="Delete it so that fpcore downloads it again"):
        load_corpus(spec)


def test_registry_is_documented_in_data_readme():
    readme = (data.REPO_ROOT / "data" / "README.md").read_text()
    for spec in data.REGISTRY.values():
        for f in spec.files.values():
            assert f.sha256 in readme, f"{f.path}'s sha256 is missing from data/README.md"
            assert f"{f.size:,}" in readme
            assert all(url in readme for url in f.urls)


# -------------------------------------------------------------------------------------------
# Batching
# -------------------------------------------------------------------------------------------
def test_batchify_makes_contiguous_streams():
    streams = batchify(torch.arange(23), 4)  # (4, 5): the last 3 tokens are dropped
    assert streams.shape == (4, 5)
    assert torch.equal(streams[1], torch.arange(5, 10))


@pytest.mark.parametrize("bptt", [1, 3, 4, 10])
def test_lm_batches_cover_every_target_once_in_order(bptt):
    stream = torch.arange(101)
    batches = LMBatches(stream, batch_size=4, bptt=bptt)  # streams of 25 tokens, 24 targets each
    xs, ys = zip(*batches)
    assert len(batches) == -(-24 // bptt)
    assert all(x.shape == y.shape and x.shape[0] == 4 for x, y in zip(xs, ys))
    assert torch.equal(torch.cat(xs, 1) + 1, torch.cat(ys, 1))  # y is x shifted by one
    assert torch.equal(torch.cat(ys, 1), batchify(stream, 4)[:, 1:])
    assert batches.tokens == 4 * 24
    assert all(x.shape[1] == bptt for x in xs[:-1]) and xs[-1].shape[1] <= bptt
    assert [x.tolist() for x, _ in batches.iter_from(2)] == [x.tolist() for x in xs[2:]]


def test_batching_rejects_bad_arguments():
    with pytest.raises(ValueError, match="1-D"):
        batchify(torch.zeros(2, 3, dtype=torch.long), 2)
    with pytest.raises(ValueError, match="too few"):
        batchify(torch.arange(3), 2)
    with pytest.raises(ValueError, match="bptt"):
        LMBatches(torch.arange(10), 2, 0)
    with pytest.raises(IndexError, match="window 2 out of range for 2 windows"):
        LMBatches(torch.arange(10), 2, 2)[2]


def test_corpus_head_slices_every_split(tiny):
    spec, root = tiny
    small = load_corpus(spec, root).head(5, 3)
    assert (small.train.numel(), small.valid.numel(), small.test.numel()) == (5, 3, 3)
    assert small.vocab_size == 8


def test_a_folder_in_place_of_a_file_is_called_a_folder(tiny):
    spec, root = tiny
    path = root / "tiny" / "valid.txt"
    path.unlink()
    path.mkdir()
    with pytest.raises(DataError, match=r"valid.txt: is a folder, not a file"):
        load_corpus(spec, root)


def test_an_unreadable_file_is_a_data_error(tiny, monkeypatch):
    spec, root = tiny
    path = root / "tiny" / "valid.txt"
    real_open = open

    def denying(file, *args, **kwargs):
        if Path(file) == path:
            raise PermissionError(13, "Permission denied", str(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(data, "open", denying, raising=False)  # as chmod 000 would for a user other than root
    with pytest.raises(DataError, match=r"valid.txt: cannot be read \(Permission denied\); give this user read"):
        load_corpus(spec, root)


def test_killed_downloads_leave_no_orphans_and_cached_files_are_readable_by_others(tiny, cache):
    spec, _ = tiny
    folder = cache / "tiny"
    folder.mkdir(parents=True)
    # what a download killed by SIGKILL leaves: a temporary file of a process that is gone (and one of an
    # earlier fpcore, which named them .<file>.<random>.part)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    orphan = folder / f".train.txt.{files._HOST}.{int(dead.stdout)}.0123abcd.tmp"
    orphan.write_bytes(b"half a download")
    (folder / ".valid.txt.x1y2z3.part").write_bytes(b"older half")
    old = os.umask(0o022)
    try:
        load_corpus(spec)
    finally:
        os.umask(old)
    assert sorted(p.name for p in folder.iterdir()) == ["test.txt", "train.txt", "valid.txt"]
    assert {stat.S_IMODE(p.stat().st_mode) for p in folder.iterdir()} == {0o644}
