"""Lattice graph algorithms: N-best against brute force, expansion, the oracle, word errors."""

from __future__ import annotations

import itertools
import random

import pytest

from fpcore.lattice import (
    Arc,
    Lattice,
    LatticeError,
    Node,
    edit_distance,
    expand,
    nbest,
    oracle,
    word_errors,
)

WORDS = ["a", "b", "c", "d", "e"]


def random_lattice(seed: int, slots: int = 5, width: int = 3, p_null: float = 0.2, p_skip: float = 0.2) -> Lattice:
    """A random DAG: a chain of slots with parallel words, null arcs and skips over a slot; scores with ties
    unlikely but duplicate word sequences likely (so unique N-best differs from path N-best)."""
    rng = random.Random(seed)
    arcs = []
    for i in range(slots):
        for _ in range(rng.randint(1, width)):
            arcs.append(Arc(i, i + 1, rng.choice(WORDS), rng.uniform(-5, 0), rng.uniform(-4, 0)))
        if rng.random() < p_null:
            arcs.append(Arc(i, i + 1, None, rng.uniform(-5, 0), 0.0))
        if i + 2 <= slots and rng.random() < p_skip:
            arcs.append(Arc(i, i + 2, rng.choice(WORDS), rng.uniform(-8, 0), rng.uniform(-4, 0)))
    rng.shuffle(arcs)  # arc order must not matter
    return Lattice(
        [Node(time=0.1 * i) for i in range(slots + 1)], arcs, 0, slots, lmscale=rng.uniform(0.5, 3), wdpenalty=-0.7
    )


def hand_lattice() -> Lattice:
    arcs = [
        Arc(0, 1, "a", -1.0, -0.5),
        Arc(0, 1, "b", -1.2, -0.3),
        Arc(1, 2, "c", -0.7, -1.0),
        Arc(1, 2, None, -2.0, 0.0),
        Arc(0, 2, "d", -3.0, -0.1),
        Arc(2, 3, "e", -0.2, -0.2),
        Arc(1, 3, "f", -1.5, -0.9),
    ]
    return Lattice([Node(float(i)) for i in range(4)], arcs, 0, 3, "hand", lmscale=2.0, wdpenalty=-0.5)


def test_path_scores_follow_the_htk_convention():
    lat = hand_lattice()
    lat.acscale = 0.5
    p = lat.path([0, 3, 5])  # a, !NULL, e
    assert p.words == ("a", "e")
    assert p.acoustic == pytest.approx(-1.0 - 2.0 - 0.2)
    assert p.lm == pytest.approx(-0.5 - 0.2)
    # acscale * a + lmscale * l + wdpenalty per word arc (two word arcs, the null arc has no penalty)
    assert p.total == pytest.approx(0.5 * -3.2 + 2.0 * -0.7 + 2 * -0.5)


def test_hand_lattice_nbest_order_matches_enumeration():
    lat = hand_lattice()
    every = sorted(lat.paths(), key=lambda p: -p.total)
    assert len(every) == lat.num_paths() == 7
    got = nbest(lat, 100, unique=False)
    assert [p.arcs for p in got] == [p.arcs for p in every]
    assert [p.words for p in got[:3]] == [("d", "e"), ("b", "e"), ("a", "e")]


@pytest.mark.parametrize("seed", range(25))
@pytest.mark.parametrize("unique", [False, True])
def test_nbest_matches_brute_force(seed, unique):
    lat = random_lattice(seed)
    every = sorted(lat.paths(), key=lambda p: -p.total)
    if unique:
        best_of: dict[tuple[str, ...], float] = {}
        for p in every:
            best_of.setdefault(p.words, p.total)
        want = sorted(best_of.values(), reverse=True)
    else:
        want = [p.total for p in every]
    for n in (1, 3, 10, 1000):
        got = nbest(lat, n, unique=unique)
        assert [p.total for p in got] == pytest.approx(want[:n], abs=1e-12)
        assert all(a.total >= b.total for a, b in zip(got, got[1:]))
        if unique:
            assert len({p.words for p in got}) == len(got)
        for p in got:  # each returned path is a real path with its own scores
            assert lat.path(p.arcs) == p


def test_nbest_survives_a_lattice_deeper_than_the_recursion_limit():
    n = 5000  # a chain of 5000 slots with two words each
    arcs = [Arc(i, i + 1, w, -float(j), 0.0) for i in range(n) for j, w in enumerate("ab")]
    lat = Lattice([Node() for _ in range(n + 1)], arcs, 0, n)
    best = nbest(lat, 3)
    assert best[0].words == ("a",) * n
    assert [p.total for p in best] == [0.0, -1.0, -1.0]


def test_nbest_rejects_bad_n():
    with pytest.raises(ValueError, match="n must be a positive int"):
        nbest(hand_lattice(), 0)


def test_cycles_and_unconnected_nodes_are_reported():
    lat = hand_lattice()
    lat.arcs.append(Arc(2, 1, "x"))
    with pytest.raises(LatticeError, match=r"not a DAG: cycle through nodes 1 -> 2 -> 1"):
        lat.topological_order()
    lat = hand_lattice()
    lat.nodes.append(Node())
    lat.arcs.append(Arc(4, 3, "x"))  # node 4: no way in from the start
    with pytest.raises(LatticeError, match=r"not reachable from the start node 0: 4"):
        lat.check()
    assert lat.pruned().check() is None and len(lat.pruned().nodes) == 4


@pytest.mark.parametrize("seed", range(10))
def test_expansion_keeps_every_path_and_gives_unique_histories(seed):
    lat = random_lattice(seed, slots=6)
    before = sorted((p.words, round(p.total, 9)) for p in lat.paths())
    for order in (1, 2, 3, 4):
        exp = expand(lat, order)
        out = exp.lattice
        out.check()
        assert sorted((p.words, round(p.total, 9)) for p in out.paths()) == before
        # every path into a node ends with that node's history
        into_paths: dict[int, set] = {}
        stack = [(out.start, ())]
        outs = out.out_arcs()
        while stack:
            v, words = stack.pop()
            into_paths.setdefault(v, set()).add(words[-(order - 1) :] if order > 1 else ())
            for i in outs[v]:
                a = out.arcs[i]
                stack.append((a.end, words + ((a.word,) if a.word is not None else ())))
        for v, seen in into_paths.items():
            if v != out.end:
                assert seen == {exp.history[v]}, (order, v, seen)
        assert exp.node_growth >= 1 and len(exp.history) == len(out.nodes) == len(exp.origin)
        assert "order" in exp.report()


@pytest.mark.parametrize("seed", range(5))
def test_expansion_to_order_one_changes_nothing(seed):
    lat = random_lattice(seed)
    exp = expand(lat, 1)
    assert exp.lattice == lat
    assert exp.node_growth == exp.arc_growth == 1


def test_expansion_grows_as_the_histories_multiply():
    # a sausage of 6 slots with 3 words each: order n needs up to 3^(n-1) copies of a node
    arcs = [Arc(i, i + 1, w) for i in range(6) for w in "abc"]
    lat = Lattice([Node() for _ in range(7)], arcs, 0, 6)
    sizes = [len(expand(lat, n).lattice.nodes) for n in (1, 2, 3, 4)]
    # order 2: node i (1..5) gets 3 copies; order 3: 3, 9, 9, 9, 9; order 4: 3, 9, 27, 27, 27 (+ start, end)
    assert sizes == [7, 2 + 5 * 3, 2 + 3 + 4 * 9, 2 + 3 + 9 + 3 * 27]


def test_expansion_stops_at_max_nodes():
    arcs = [Arc(i, i + 1, w) for i in range(6) for w in "abc"]
    lat = Lattice([Node() for _ in range(7)], arcs, 0, 6)
    with pytest.raises(LatticeError, match="passed max_nodes=20"):
        expand(lat, 4, max_nodes=20)


def test_edit_distance_and_word_errors():
    assert edit_distance("a b c".split(), "a x c d".split()) == 2
    assert edit_distance([], ["a"]) == 1 and edit_distance(["a"], []) == 1
    assert word_errors([["a", "b"], ["c"]], [["a"], ["c", "d"]]) == (2, 3)


@pytest.mark.parametrize("seed", range(15))
def test_oracle_matches_brute_force(seed):
    lat = random_lattice(seed)
    rng = random.Random(seed)
    ref = [rng.choice(WORDS) for _ in range(rng.randint(2, 7))]
    errors, path = oracle(lat, ref)
    assert errors == min(edit_distance(ref, p.words) for p in lat.paths())
    assert edit_distance(ref, path.words) == errors


def test_oracle_skips_markers():
    arcs = [Arc(0, 1, "<s>"), Arc(1, 2, "a"), Arc(1, 2, "b"), Arc(2, 3, "</s>")]
    lat = Lattice([Node() for _ in range(4)], arcs, 0, 3)
    assert oracle(lat, ["b"], skip=lambda w: w in ("<s>", "</s>"))[0] == 0
    assert oracle(lat, ["b"])[0] == 2


def test_num_paths_counts_exactly():
    arcs = [Arc(i, i + 1, w) for i in range(40) for w in "ab"]
    lat = Lattice([Node() for _ in range(41)], arcs, 0, 40)
    assert lat.num_paths() == 2**40
    with pytest.raises(LatticeError, match="more than limit"):
        next(lat.paths())
    assert sum(1 for _ in itertools.islice(hand_lattice().paths(), 100)) == 7
