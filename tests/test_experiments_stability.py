"""fpcore.experiments_stability and fpcore.models.char: the training experiments of notebook 04."""

from __future__ import annotations

import pytest
import torch

from fpcore import cells
from fpcore import stability as st
from fpcore.experiments_stability import fit_char_model, recurrent_norm, train_twins
from fpcore.models.char import CharRNN, char_batches

VOCAB = 11


def _tokens(n: int = 5000) -> torch.Tensor:
    return torch.randint(0, VOCAB, (n,), generator=torch.Generator().manual_seed(0))


def _make(norm: float):
    def make():
        return st.scale_spectral_(CharRNN(VOCAB, hidden=12, embed=6), norm)

    return make


def test_training_twins_stay_closer_for_stable_models_and_larger_k():
    batches = char_batches(_tokens(), batch=8, length=16)
    # the pairs differ only in the projection: the same start (||W||_2 = 1.5), data, learning rate
    stable1 = train_twins(_make(1.5), batches, k=1, steps=15, lr=0.5, project=True, max_norm=0.9)
    stable8 = train_twins(_make(1.5), batches, k=8, steps=15, lr=0.5, project=True, max_norm=0.9)
    free8 = train_twins(_make(1.5), batches, k=8, steps=15, lr=0.5, project=False)
    assert stable1.distance[0] == stable8.distance[0] == free8.distance[0] == 0.0, "same initialisation"
    assert stable8.distance[-1] < stable1.distance[-1]
    assert free8.distance[-1] > stable8.distance[-1], "the unprojected pair drifts further apart"
    assert max(stable8.norm) <= 0.9 * (1 + 1e-5) < 1 < min(free8.norm), "projected: stable throughout; free: not"
    assert stable8.project and not free8.project and stable8.k == 8
    assert len(stable8.loss_recurrent) == len(stable8.loss_truncated) == 15 and len(stable8.steps) == 16


def test_twins_record_every_and_reject_bad_arguments():
    batches = char_batches(_tokens(), batch=4, length=8)
    h = train_twins(_make(0.5), batches, k=2, steps=5, lr=0.1, project=False, record_every=2)
    assert h.steps == [0, 2, 4, 5]
    with pytest.raises(ValueError, match=">= 1"):
        train_twins(_make(0.5), batches, k=0, steps=5)


def test_truncated_char_model_is_the_recurrent_one_at_full_window():
    torch.manual_seed(0)
    model = CharRNN(VOCAB, hidden=10, embed=4, cell="lstm")
    x = _tokens(60).view(3, 20)
    with torch.no_grad():
        full, trunc, short = model(x), model(x, k=20), model(x, k=2)
    torch.testing.assert_close(trunc, full, rtol=1e-5, atol=1e-5)
    with torch.no_grad():  # the truncated model is paper B's: each position from the last k inputs only
        by_windows = cells.truncated(cells.from_torch(model.rnn), model.embed(x), 3)[..., :10]  # h of [h, c]
        torch.testing.assert_close(model.hidden_states(x, 3), by_windows, rtol=1e-5, atol=1e-6)
    assert float((short - full).abs().max()) > 1e-3, "a short window is a different model"
    with pytest.raises(ValueError, match="cell must be"):
        CharRNN(VOCAB, cell="transformer")


def test_fit_char_model_learns_and_projects():
    torch.manual_seed(0)
    model = st.scale_spectral_(CharRNN(VOCAB, hidden=16, embed=8), 2.0)
    tokens = torch.arange(3000) % VOCAB  # a cycle: easy to learn
    losses = fit_char_model(model, tokens, steps=40, batch=8, length=16, lr=1e-2, project=True, progress=False)
    assert len(losses) == 40 and sum(losses[-5:]) < 0.5 * sum(losses[:5])
    assert recurrent_norm(model) <= 1 + 1e-5, "projected after every step (and at the start)"
    with pytest.raises(ValueError, match="steps must be"):
        fit_char_model(model, tokens, steps=0, progress=False)


def test_recurrent_norm_needs_recurrent_weights():
    with pytest.raises(ValueError, match="no recurrent weights"):
        recurrent_norm(torch.nn.Linear(3, 3))


def test_char_batches_are_deterministic_and_shifted():
    tokens = torch.arange(1000)
    b = char_batches(tokens, batch=4, length=10, seed=3)
    (x1, y1), (x2, _) = b(5), b(5)
    assert torch.equal(x1, x2) and torch.equal(y1, x1 + 1) and x1.shape == (4, 10)
    assert not torch.equal(b(6)[0], x1), "another step, other windows"
    with pytest.raises(ValueError, match="too few"):
        char_batches(torch.arange(5), 2, 10)
