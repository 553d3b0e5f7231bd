r"""Word lattices and their rescoring by language models of finite and unbounded order.

    lat = read_slf("utt1.lat.gz")                      # HTK SLF, words on nodes or links, gzip or not
    lat.best_path().words, nbest(lat, 100)
    exp = expand(lat, order=3); exp.report()           # every node gets a unique 2-token history
    res = rescore_exact(lat, TorchLM(model, vocab))    # a finite-order model: exact
    res = rescore_merged(lat, TorchLM(lstm, vocab), history=3)  # a recurrent model: merged histories
    hyps = rescore_nbest(lat, TorchLM(lstm, vocab), n=100)     # a recurrent model: N-best
    errors, path = oracle(lat, reference)

The claim this package makes checkable is paper A's (Wang & Ragni, arXiv 2106.02417): a model of finite
order, used the same way in training and inference, rescores a lattice *exactly* once the lattice is expanded
to the model's order; an ordinary recurrent LM can only be approximated there. Lattices: :mod:`fpcore.lattice.slf`
reads and writes real ones; :mod:`fpcore.lattice.synth` makes seeded synthetic ones from text.
"""

from __future__ import annotations

from fpcore.lattice.core import (
    Arc,
    Expansion,
    Lattice,
    LatticeError,
    Node,
    Path,
    edit_distance,
    expand,
    nbest,
    oracle,
    word_errors,
)
from fpcore.lattice.rescore import (
    Rescored,
    RescoredPath,
    discrepancy,
    hypothesis,
    path_tokens,
    rescore_exact,
    rescore_merged,
    rescore_nbest,
    sentence_scores,
    with_sentence_end,
)
from fpcore.lattice.scorers import (
    FiniteOrderLM,
    LanguageModel,
    NGramLM,
    RecurrentLM,
    TorchLM,
    Vocabulary,
    order_of,
)
from fpcore.lattice.slf import SLFError, read_slf, write_slf

__all__ = [
    "Arc",
    "Node",
    "Lattice",
    "LatticeError",
    "Path",
    "Expansion",
    "nbest",
    "expand",
    "edit_distance",
    "word_errors",
    "oracle",
    "SLFError",
    "read_slf",
    "write_slf",
    "LanguageModel",
    "FiniteOrderLM",
    "RecurrentLM",
    "Vocabulary",
    "NGramLM",
    "TorchLM",
    "order_of",
    "Rescored",
    "RescoredPath",
    "with_sentence_end",
    "rescore_exact",
    "rescore_merged",
    "rescore_nbest",
    "sentence_scores",
    "path_tokens",
    "hypothesis",
    "discrepancy",
]
