r"""Reading and writing HTK Standard Lattice Format (SLF) files, plain or gzip-compressed.

The format (The HTK Book, chapter "HTK Standard Lattice Format (SLF)"), as HTK and Kaldi's
``utils/convert_slf.pl`` write it::

    # comment lines start with '#'
    VERSION=1.1
    UTTERANCE=sw02001-A_000098-000177
    lmscale=12.00 wdpenalty=-10.00
    N=4 L=4                          (or NODES= / LINKS=; ends the header)
    I=0 t=0.00 W=!NULL               node lines: I=, time t=, word W= (words may sit on nodes ...)
    I=1 t=0.31
    J=0 S=0 E=1 W=the a=-310.2 l=-2.7    link lines: J=, start S=, end E=, (... or on links) W=,
    J=1 S=0 E=1 W=a a=-312.0 l=-3.3      acoustic a=, language model l=

Fields are ``name=value`` separated by white space; a value may be "double-quoted" (with backslash escapes).
Full names (``NODES``, ``LINKS``, ``time``, ``WORD``, ``START``, ``END``, ``acoustic``, ``language``) and
their one-letter abbreviations are both read. Other fields are kept as strings and written back.

Conventions fixed here (and tested):

- Words on nodes (HTK's compact form, Kaldi's default) belong to every link that ends in the node, so they
  are moved to those links; a word on the link itself wins. ``!NULL`` (and Kaldi's ``<eps>``) is a null
  word. Forward lattices only (the word sits on the link's end node).
- Scores are log-likelihoods. ``base=`` gives the log base (default e; ``base=0`` means plain probabilities):
  ``a``, ``l`` and ``wdpenalty`` are converted to natural log when read, and written in natural log (no
  ``base=`` field). Kaldi writes costs negated into natural-log likelihoods, so its SLF files read as is.
- A path's score is ``acscale * a + lmscale * l + wdpenalty`` per word arc (HTK's convention), with
  ``lmscale``, ``wdpenalty`` and ``acscale`` (HTK 3.4) from the header, defaults 1, 0, 1.
- The start and end nodes are ``start=`` / ``end=`` from the header when given, else the one node without
  incoming links and the one without outgoing links.

A malformed file raises :class:`SLFError` naming the file, the line and what is wrong. A lattice with a
cycle, or with nodes that lie on no start-to-end path, is reported too (``on_unconnected="prune"`` drops those
nodes with a warning instead of an error). Sub-lattices (``SUBLAT``) and backward lattices are not supported
and say so.
"""

from __future__ import annotations

import gzip
import math
import os
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from fpcore.lattice.core import Arc, Lattice, LatticeError, Node

__all__ = ["SLFError", "read_slf", "write_slf", "NULL_WORDS"]

NULL_WORDS = frozenset({"!NULL", "<eps>"})

_FIELD = re.compile(r'\s*([^\s=]+)=("(?:[^"\\]|\\.)*"|[^\s"]*)(?=\s|$)')
_UNESCAPE = re.compile(r"\\(.)")

_HEADER_ALIASES = {"V": "VERSION", "U": "UTTERANCE", "S": "SUBLAT", "N": "NODES", "L": "LINKS"}
_NODE_ALIASES = {"t": "time", "W": "WORD"}
_LINK_ALIASES = {"S": "START", "E": "END", "W": "WORD", "a": "acoustic", "l": "language"}


class SLFError(LatticeError):
    """A malformed SLF file; the message names the file and line."""


def _fields(line: str, where: str) -> list[tuple[str, str]]:
    """Split one SLF line into (name, value) pairs; quoted values are unquoted."""
    out, pos = [], 0
    line = line.rstrip()
    while pos < len(line):
        m = _FIELD.match(line, pos)
        if m is None:
            bad = line[pos:].split()[0]
            raise SLFError(f"{where}: cannot read {bad!r} as a name=value field")
        name, value = m.group(1), m.group(2)
        if value.startswith('"'):
            value = _UNESCAPE.sub(r"\1", value[1:-1])
        out.append((name, value))
        pos = m.end()
    return out


@dataclass
class _Reader:
    """The state of one file being read (so every error can say where it is)."""

    path: str
    lineno: int = 0
    header: dict[str, str] = field(default_factory=dict)
    n_nodes: int | None = None
    n_links: int | None = None
    nodes: dict[int, Node] = field(default_factory=dict)
    node_words: dict[int, str] = field(default_factory=dict)
    links: dict[int, tuple[Arc, int, bool]] = field(default_factory=dict)  # J -> (arc, line, had a word)
    base: float = math.e

    def where(self, lineno: int | None = None) -> str:
        return f"{self.path}:{self.lineno if lineno is None else lineno}"

    def fail(self, what: str, lineno: int | None = None) -> SLFError:
        return SLFError(f"{self.where(lineno)}: {what}")

    def to_ln(self, x: float) -> float:
        """A score in the file's log base (``base=``; 0: a plain probability) -> natural log."""
        if self.base == 0:
            if x <= 0:
                raise self.fail(f"base=0 means plain probabilities, but a score is {x}")
            return math.log(x)
        return x * math.log(self.base)

    def number(self, name: str, value: str, kind: type = float) -> float:
        try:
            x = kind(value)
        except ValueError:
            raise self.fail(f"field {name}={value!r} is not {'an integer' if kind is int else 'a number'}") from None
        if kind is float and not math.isfinite(x) and not (name in ("a", "l", "acoustic", "language") and x < 0):
            raise self.fail(f"field {name}={value!r} is not finite")
        return x


def _open_text(path: Path) -> str:
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as err:
            raise SLFError(f"{path}: not a readable gzip file ({err})") from None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise SLFError(f"{path}: not UTF-8 text (byte {err.start}); SLF is a text format") from None


def read_slf(path: str | os.PathLike, *, on_unconnected: str = "error") -> Lattice:
    """Read one lattice from an SLF file (gzip-compressed or not; detected from the content).

    Scores are converted to natural log (see the module docstring). ``on_unconnected``: "error" (default)
    raises SLFError when some node lies on no start-to-end path; "prune" drops such nodes and their links
    with a warning that names them. A cycle is always an error.
    """
    if on_unconnected not in ("error", "prune"):
        raise ValueError(f"on_unconnected must be 'error' or 'prune', got {on_unconnected!r}")
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such lattice file")
    r = _Reader(str(path))
    in_body = False
    for r.lineno, line in enumerate(_open_text(path).splitlines(), 1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped == ".":
            raise r.fail("a '.' line ends a sub-lattice; sub-lattices (SUBLAT) are not supported")
        fields = _fields(stripped, r.where())
        first = fields[0][0]
        if not in_body:
            _read_header_line(r, fields)
            in_body = r.n_nodes is not None and r.n_links is not None
        elif first == "I":
            _read_node(r, fields)
        elif first == "J":
            _read_link(r, fields)
        elif first in ("VERSION", "V", "UTTERANCE", "U"):
            raise r.fail(f"a second header ({first}=) after the lattice: one lattice per file is supported")
        else:
            raise r.fail(f"expected a node line (I=...) or a link line (J=...), found {first}=")
    if not in_body:
        raise r.fail(
            "no size line: the header must end with the number of nodes and links (N=... L=...)"
            if r.lineno
            else "the file is empty",
            r.lineno or 1,
        )
    return _build(r, on_unconnected)


def _read_header_line(r: _Reader, fields: list[tuple[str, str]]) -> None:
    for name, value in fields:
        full = _HEADER_ALIASES.get(name, name)
        if full == "SUBLAT":
            raise r.fail("sub-lattices (SUBLAT=) are not supported")
        if full in ("I", "J"):
            raise r.fail(f"a {'node' if full == 'I' else 'link'} line before the size line (N=... L=...)")
        if full == "NODES":
            r.n_nodes = int(r.number(name, value, int))
            if r.n_nodes < 1:
                raise r.fail(f"N={value}: a lattice has at least one node")
        elif full == "LINKS":
            r.n_links = int(r.number(name, value, int))
            if r.n_links < 0:
                raise r.fail(f"L={value}: the number of links cannot be negative")
        elif full == "dir" and value.lower().startswith("b"):
            raise r.fail("backward lattices (dir=b) are not supported")
        elif full == "base":
            r.base = r.number(name, value)
            if r.base < 0 or r.base == 1:
                raise r.fail(f"base={value} is not a usable log base (use e, 10, ... or 0 for plain probabilities)")
        else:
            if full in ("lmscale", "wdpenalty", "acscale", "base", "start", "end"):
                r.number(name, value, int if full in ("start", "end") else float)
            r.header[full] = value


def _read_node(r: _Reader, fields: list[tuple[str, str]]) -> None:
    assert r.n_nodes is not None
    i = int(r.number("I", fields[0][1], int))
    if not 0 <= i < r.n_nodes:
        raise r.fail(f"node I={i} is out of range: N={r.n_nodes} means nodes 0..{r.n_nodes - 1}")
    if i in r.nodes:
        raise r.fail(f"node I={i} is defined twice")
    node = Node()
    for name, value in fields[1:]:
        full = _NODE_ALIASES.get(name, name)
        if full == "time":
            node.time = r.number(name, value)
        elif full == "WORD":
            r.node_words[i] = value
        elif full == "L":
            raise r.fail("sub-lattice references (L= on a node) are not supported")
        else:
            node.fields[name] = value
    r.nodes[i] = node


def _read_link(r: _Reader, fields: list[tuple[str, str]]) -> None:
    assert r.n_links is not None and r.n_nodes is not None
    j = int(r.number("J", fields[0][1], int))
    if not 0 <= j < r.n_links:
        raise r.fail(f"link J={j} is out of range: L={r.n_links} means links 0..{r.n_links - 1}")
    if j in r.links:
        raise r.fail(f"link J={j} is defined twice (first on line {r.links[j][1]})")
    named: dict[str, str] = {}
    for name, value in fields[1:]:
        full = _LINK_ALIASES.get(name, name)
        if full in named:
            raise r.fail(f"link J={j} has the field {name}= twice")
        named[full] = value
    ends = []
    for need in ("START", "END"):
        if need not in named:
            raise r.fail(f"link J={j} has no {need} node ({need[0]}=)")
        v = int(r.number(need[0], named.pop(need), int))
        if not 0 <= v < r.n_nodes:
            raise r.fail(f"link J={j}: {need[0]}={v} is not a node (N={r.n_nodes})")
        ends.append(v)
    word = named.pop("WORD", None)
    one = "0" if r.base else "1"  # a missing score is log 1 (or probability 1 when base=0)
    acoustic = r.to_ln(r.number("a", named.pop("acoustic", one)))
    lm = r.to_ln(r.number("l", named.pop("language", one)))
    arc = Arc(ends[0], ends[1], None if word is None or word in NULL_WORDS else word, acoustic, lm, named)
    r.links[j] = (arc, r.lineno, word is not None)


def _build(r: _Reader, on_unconnected: str) -> Lattice:
    assert r.n_nodes is not None and r.n_links is not None
    if len(r.links) != r.n_links:
        missing = sorted(set(range(r.n_links)) - set(r.links))
        raise r.fail(f"L={r.n_links} but {len(r.links)} links were defined (missing J={missing[:10]})")
    if r.nodes and len(r.nodes) != r.n_nodes:
        missing = sorted(set(range(r.n_nodes)) - set(r.nodes))
        raise r.fail(f"N={r.n_nodes} but {len(r.nodes)} nodes were defined (missing I={missing[:10]})")
    nodes = [r.nodes.get(i, Node()) for i in range(r.n_nodes)]
    arcs = []
    for j in range(r.n_links):
        arc, lineno, has_word = r.links[j]
        if not has_word:  # the word of the end node (forward lattices)
            word = r.node_words.get(arc.end)
            if word is None:
                raise r.fail(f"link J={j} has no word (W=), and neither has its end node {arc.end}", lineno)
            arc.word = None if word in NULL_WORDS else word
        arcs.append(arc)
    start, end = _terminal(r, arcs, "start"), _terminal(r, arcs, "end")
    # a non-null word on the start node labels no link: keep it with the node, for the round trip
    if start in r.node_words and r.node_words[start] not in NULL_WORDS:
        nodes[start].fields["W"] = r.node_words[start]
    header = dict(r.header)
    lat = Lattice(
        nodes=nodes,
        arcs=arcs,
        start=start,
        end=end,
        utterance=header.pop("UTTERANCE", None),
        lmscale=float(header.pop("lmscale", 1.0)),
        wdpenalty=r.to_ln(float(header.pop("wdpenalty", 0.0 if r.base else 1.0))),
        acscale=float(header.pop("acscale", 1.0)),
        header={k: v for k, v in header.items() if k not in ("start", "end", "base")},
    )
    try:
        lat.check()
    except LatticeError as err:
        if on_unconnected == "prune" and "not a DAG" not in str(err):
            warnings.warn(f"{r.path}: {err}; pruned", stacklevel=3)
            return lat.pruned()
        hint = "" if "not a DAG" in str(err) else " (read with on_unconnected='prune' to drop them)"
        raise SLFError(f"{r.path}: {err}{hint}") from None
    return lat


def _terminal(r: _Reader, arcs: list[Arc], which: str) -> int:
    """The start (or end) node: header start=/end= if present, else the one node without incoming
    (outgoing) links."""
    assert r.n_nodes is not None
    if which in r.header:
        v = int(r.header[which])
        if not 0 <= v < r.n_nodes:
            raise SLFError(f"{r.path}: header {which}={v} is not a node (N={r.n_nodes})")
        return v
    has = {a.end for a in arcs} if which == "start" else {a.start for a in arcs}
    free = [v for v in range(r.n_nodes) if v not in has]
    direction = "incoming" if which == "start" else "outgoing"
    if len(free) == 1:
        return free[0]
    if not free:
        raise SLFError(f"{r.path}: every node has {direction} links, so there is no {which} node (a cycle?)")
    raise SLFError(
        f"{r.path}: nodes {free[:10]} all have no {direction} links, so the {which} node is ambiguous "
        f"(nodes off every path? or name it with {which}= in the header)"
    )


# -- writing -------------------------------------------------------------------------------------------------------
def _quote(value: str) -> str:
    if value and not re.search(r'[\s"\\]', value):
        return value
    escaped = value.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


def _num(x: float) -> str:
    return repr(float(x))  # the shortest string that reads back to the same float


def write_slf(lattice: Lattice, path: str | os.PathLike, *, words_on: str = "arcs") -> Path:
    """Write ``lattice`` as SLF (gzip-compressed when ``path`` ends in .gz); return the path.

    ``words_on="arcs"`` writes W= on links (Kaldi's ``--word-to-link``); ``"nodes"`` writes it on nodes
    (HTK's compact form), which needs every node's incoming links to share one word. Scores are written
    in natural log, exactly (shortest round-trip float text), so reading the file back gives an equal lattice.
    """
    if words_on not in ("arcs", "nodes"):
        raise ValueError(f"words_on must be 'arcs' or 'nodes', got {words_on!r}")
    lattice.check()
    path = Path(path)
    lines = [f"VERSION={_quote(lattice.header.get('VERSION', '1.1'))}"]
    if lattice.utterance is not None:
        lines.append(f"UTTERANCE={_quote(lattice.utterance)}")
    lines += [f"{k}={_quote(v)}" for k, v in lattice.header.items() if k != "VERSION"]
    lines.append(f"lmscale={_num(lattice.lmscale)} wdpenalty={_num(lattice.wdpenalty)} acscale={_num(lattice.acscale)}")
    lines.append(f"N={len(lattice.nodes)} L={len(lattice.arcs)}")
    node_word: dict[int, str] = {}
    if words_on == "nodes":
        for j, arc in enumerate(lattice.arcs):
            word = "!NULL" if arc.word is None else arc.word
            if node_word.setdefault(arc.end, word) != word:
                raise ValueError(
                    f"node {arc.end} is entered by links with different words ({node_word[arc.end]!r} and "
                    f"{word!r}, link {j}); write it with words_on='arcs'"
                )
        node_word.setdefault(lattice.start, lattice.nodes[lattice.start].fields.get("W", "!NULL"))
    for i, node in enumerate(lattice.nodes):
        parts = [f"I={i}"]
        if node.time is not None:
            parts.append(f"t={_num(node.time)}")
        if i in node_word:
            parts.append(f"W={_quote(node_word[i])}")
        elif "W" in node.fields:  # a word on the start node (it labels no link)
            parts.append(f"W={_quote(node.fields['W'])}")
        parts += [f"{k}={_quote(v)}" for k, v in node.fields.items() if k != "W"]
        lines.append(" ".join(parts))
    for j, arc in enumerate(lattice.arcs):
        parts = [f"J={j}", f"S={arc.start}", f"E={arc.end}"]
        if words_on == "arcs":
            parts.append(f"W={_quote('!NULL' if arc.word is None else arc.word)}")
        parts += [f"a={_num(arc.acoustic)}", f"l={_num(arc.lm)}"]
        parts += [f"{k}={_quote(v)}" for k, v in arc.fields.items()]
        lines.append(" ".join(parts))
    text = "\n".join(lines) + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    data = text.encode("utf-8")
    tmp.write_bytes(gzip.compress(data, mtime=0) if path.suffix == ".gz" else data)
    os.replace(tmp, path)
    return path
