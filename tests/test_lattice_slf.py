"""HTK SLF reading and writing: the fixtures, round trips, gzip, log bases, and every malformed case."""

from __future__ import annotations

import gzip
import math
from pathlib import Path

import pytest

from fpcore.lattice import Arc, Lattice, Node, SLFError, nbest, read_slf, write_slf

FIXTURES = Path(__file__).parent / "fixtures" / "slf"


def test_htk_fixture_words_on_nodes_links_null_and_scales():
    lat = read_slf(FIXTURES / "htk_words_on_nodes.slf")
    assert lat.utterance == "hand written 1"
    assert (lat.lmscale, lat.wdpenalty, lat.acscale) == (2.0, -1.5, 0.5)
    assert lat.header == {"VERSION": "1.0", "lmname": "bigram"}
    assert (lat.start, lat.end, len(lat.nodes), len(lat.arcs)) == (0, 7, 8, 11)
    # words on nodes go to the links that end there; a word on the link wins; !NULL is a null arc
    assert [a.word for a in lat.arcs] == ["the", "a", "cat", "cat", "hat", "hat", "sat", "sad", "sat", None, None]
    assert lat.nodes[3].time == 0.5 and lat.arcs[6].acoustic == -15.0 and lat.arcs[6].lm == -1.0
    best = lat.best_path()
    # the cat sat through node 5: 0.5 * (-10 - 20 - 15 - 0.5) + 2 * (-1 - 3 - 1) - 1.5 * 3
    assert best.words == ("the", "cat", "sat")
    assert best.total == pytest.approx(0.5 * -45.5 + 2 * -5.0 - 4.5)
    # six paths, four distinct sentences ("the cat sat" twice, "a cat sat" twice)
    assert lat.num_paths() == 6 and len(nbest(lat, 10)) == 4 and len(nbest(lat, 10, unique=False)) == 6


def test_kaldi_fixture_words_on_links_tabs_and_eps():
    lat = read_slf(FIXTURES / "kaldi_words_on_links.slf")
    assert lat.utterance == "spk1-utt2" and (lat.lmscale, lat.wdpenalty, lat.acscale) == (1.0, 0.0, 1.0)
    assert [a.word for a in lat.arcs] == [None, "we", "wee", "see", "sea", "it", None]
    assert lat.arcs[1].fields == {"v": "0.000000"}
    assert lat.arcs[6].acoustic == -1.25 and lat.arcs[6].lm == -0.5
    assert [p.words for p in nbest(lat, 3)] == [("wee", "it"), ("we", "see", "it"), ("we", "sea", "it")]


@pytest.mark.parametrize("name", ["htk_words_on_nodes.slf", "kaldi_words_on_links.slf"])
@pytest.mark.parametrize("suffix", [".lat", ".lat.gz"])
def test_round_trip(tmp_path, name, suffix):
    lat = read_slf(FIXTURES / name)
    out = write_slf(lat, tmp_path / f"copy{suffix}")
    assert (out.read_bytes()[:2] == b"\x1f\x8b") == suffix.endswith(".gz")
    again = read_slf(out)
    assert again == lat
    assert write_slf(again, tmp_path / f"twice{suffix}").read_bytes() == out.read_bytes()


def test_round_trip_with_words_on_nodes(tmp_path):
    arcs = [Arc(0, 1, "<s>"), Arc(1, 2, "x y", -1.5, -0.25), Arc(1, 3, 'say "hi"', -2.0, -1.0)]
    arcs.append(Arc(2, 3, 'say "hi"', -0.5, -2.0))
    arcs.append(Arc(3, 4, None, -0.125))
    lat = Lattice([Node(0.1 * i) for i in range(5)], arcs, 0, 4, utterance="u 1", lmscale=12.0, wdpenalty=-3.0)
    out = write_slf(lat, tmp_path / "nodes.lat", words_on="nodes")
    text = out.read_text()
    assert 'W="x y"' in text and 'W="say \\"hi\\""' in text and "J=1 S=1 E=2 a=" in text
    assert read_slf(out) == lat


def test_words_on_nodes_needs_one_word_per_node(tmp_path):
    lat = read_slf(FIXTURES / "htk_words_on_nodes.slf")
    with pytest.raises(ValueError, match="node 5 is entered by links with different words"):
        write_slf(lat, tmp_path / "x.lat", words_on="nodes")


@pytest.mark.parametrize("base", ["10", "2.0"])
def test_log_base_is_converted_to_natural_log(tmp_path, base):
    text = f"VERSION=1.0\nbase={base}\nwdpenalty=-2\nN=2 L=1\nJ=0 S=0 E=1 W=a a=-3 l=-1.5\n"
    (tmp_path / "b.lat").write_text(text)
    lat = read_slf(tmp_path / "b.lat")
    scale = math.log(float(base))
    assert lat.arcs[0].acoustic == pytest.approx(-3 * scale) and lat.arcs[0].lm == pytest.approx(-1.5 * scale)
    assert lat.wdpenalty == pytest.approx(-2 * scale) and "base" not in lat.header


def test_base_zero_means_plain_probabilities(tmp_path):
    (tmp_path / "p.lat").write_text("base=0\nN=2 L=1\nJ=0 S=0 E=1 W=a a=0.5 l=0.25\n")
    lat = read_slf(tmp_path / "p.lat")
    assert lat.arcs[0].acoustic == pytest.approx(math.log(0.5)) and lat.arcs[0].lm == pytest.approx(math.log(0.25))


def test_start_and_end_from_the_header(tmp_path):
    text = "start=1 end=0\nN=3 L=2\nJ=0 S=1 E=2 W=a\nJ=1 S=2 E=0 W=b\n"
    (tmp_path / "se.lat").write_text(text)
    lat = read_slf(tmp_path / "se.lat")
    assert (lat.start, lat.end) == (1, 0) and lat.best_path().words == ("a", "b")


HEADER = "VERSION=1.0\nN=3 L=2\n"
LINKS = "J=0 S=0 E=1 W=a\nJ=1 S=1 E=2 W=b\n"
MALFORMED = [
    # (name, text, the message: file and line first)
    ("empty", "", r"empty\.lat:1: the file is empty"),
    ("no size line", "VERSION=1.0\nUTTERANCE=x\n", r"no size line"),
    ("not a field", HEADER + "J=0 S=0 E=1 W=a\nJ=1 S=1 oops E=2 W=b\n", r":4: cannot read 'oops' as a name=value"),
    ("bad number", HEADER + "J=0 S=0 E=1 W=a a=-1.x\n" + LINKS[16:], r":3: field a='-1.x' is not a number"),
    ("bad node id", HEADER + "I=7\n" + LINKS, r":3: node I=7 is out of range: N=3 means nodes 0..2"),
    ("node twice", HEADER + "I=1\nI=1\n" + LINKS, r":4: node I=1 is defined twice"),
    ("link twice", HEADER + "J=0 S=0 E=1 W=a\nJ=0 S=1 E=2 W=b\n", r":4: link J=0 is defined twice \(first on line 3\)"),
    ("no end", HEADER + "J=0 S=0 E=1 W=a\nJ=1 S=1 W=b\n", r":4: link J=1 has no END node \(E=\)"),
    ("end not a node", HEADER + "J=0 S=0 E=1 W=a\nJ=1 S=1 E=9 W=b\n", r":4: link J=1: E=9 is not a node \(N=3\)"),
    ("too few links", "N=3 L=3\n" + LINKS, r"L=3 but 2 links were defined \(missing J=\[2\]\)"),
    ("no word", HEADER + "J=0 S=0 E=1 W=a\nJ=1 S=1 E=2\n", r":4: link J=1 has no word \(W=\), and neither has its end"),
    ("link before size", "J=0 S=0 E=1\n", r":1: a link line before the size line"),
    ("sub-lattice", "SUBLAT=x\nN=1 L=0\n", r":1: sub-lattices \(SUBLAT=\) are not supported"),
    ("backward", "dir=b\nN=1 L=0\n", r":1: backward lattices \(dir=b\) are not supported"),
    ("two lattices", HEADER + LINKS + "VERSION=1.0\n", r":5: a second header \(VERSION=\) after the lattice"),
    ("junk line", HEADER + LINKS + "X=1\n", r":5: expected a node line \(I=...\) or a link line \(J=...\)"),
    ("zero prob", "base=0\nN=2 L=1\nJ=0 S=0 E=1 W=a a=0\n", r":3: base=0 means plain probabilities, but a score is 0"),
    ("bad scale", "lmscale=big\nN=2 L=1\nJ=0 S=0 E=1 W=a\n", r":1: field lmscale='big' is not a number"),
    ("cycle", "N=4 L=4\nJ=0 S=0 E=1 W=a\nJ=1 S=1 E=2 W=b\nJ=2 S=2 E=1 W=c\nJ=3 S=2 E=3 W=d\n", r"not a DAG: cycle "),
    ("two starts", "N=4 L=2\nJ=0 S=0 E=1 W=a\nJ=1 S=2 E=3 W=b\n", r"nodes \[0, 2\] all have no incoming links"),
    (
        "unreachable",
        "start=0 end=2\nN=4 L=3\nJ=0 S=0 E=1 W=a\nJ=1 S=1 E=2 W=b\nJ=2 S=3 E=2 W=c\n",
        r"nodes not reachable from the start node 0: 3 \(read with on_unconnected='prune'",
    ),
    (
        "dead end",
        "end=2\nN=4 L=3\nJ=0 S=0 E=1 W=a\nJ=1 S=1 E=2 W=b\nJ=2 S=1 E=3 W=c\n",
        r"nodes from which the end node 2 cannot be reached: 3",
    ),
]


@pytest.mark.parametrize("name, text, message", MALFORMED, ids=[m[0] for m in MALFORMED])
def test_malformed_files_name_the_file_the_line_and_the_problem(tmp_path, name, text, message):
    path = tmp_path / ("empty.lat" if name == "empty" else "bad.lat")
    path.write_text(text)
    with pytest.raises(SLFError, match=message) as err:
        read_slf(path)
    assert str(err.value).startswith(str(path))


def test_bad_gzip_and_bad_text(tmp_path):
    (tmp_path / "cut.lat.gz").write_bytes(gzip.compress(b"N=2 L=1\nJ=0 S=0 E=1 W=a\n")[:15])
    with pytest.raises(SLFError, match=r"cut\.lat\.gz: not a readable gzip file"):
        read_slf(tmp_path / "cut.lat.gz")
    (tmp_path / "latin1.lat").write_bytes(b"N=2 L=1\nJ=0 S=0 E=1 W=caf\xe9\n")
    with pytest.raises(SLFError, match=r"latin1\.lat: not UTF-8 text"):
        read_slf(tmp_path / "latin1.lat")
    with pytest.raises(FileNotFoundError, match="no such lattice file"):
        read_slf(tmp_path / "missing.lat")


def test_prune_drops_unconnected_nodes_with_a_warning(tmp_path):
    (tmp_path / "p.lat").write_text("start=0 end=2\nN=4 L=3\nJ=0 S=0 E=1 W=a\nJ=1 S=1 E=2 W=b\nJ=2 S=3 E=2 W=c\n")
    with pytest.warns(UserWarning, match=r"p\.lat: nodes not reachable from the start node 0: 3; pruned"):
        lat = read_slf(tmp_path / "p.lat", on_unconnected="prune")
    assert len(lat.nodes) == 3 and [a.word for a in lat.arcs] == ["a", "b"]
    with pytest.raises(ValueError, match="on_unconnected must be"):
        read_slf(tmp_path / "p.lat", on_unconnected="drop")


def test_write_refuses_a_broken_lattice(tmp_path):
    lat = Lattice([Node(), Node()], [Arc(0, 1, "a"), Arc(1, 0, "b")], 0, 1)
    with pytest.raises(ValueError, match="not a DAG"):
        write_slf(lat, tmp_path / "x.lat")
