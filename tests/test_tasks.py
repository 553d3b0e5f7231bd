"""The problem-2b generator: shapes, determinism by seed, label = sign of x_0, no one-hots on the host."""

from __future__ import annotations

import pytest
import torch

from fpcore.tasks import MAX_T, P, SignedOneHot, batch_seed, dense_inputs, sign_batch


@pytest.mark.parametrize("B,T", [(1, 1), (3, 7), (16, 1024)])
def test_shapes_dtypes_and_symbol_ranges(B, T):
    symbols, labels = sign_batch(B, T, seed=1, step=2)
    assert symbols.shape == (B, T) and symbols.dtype == torch.int64
    assert labels.shape == (B,) and labels.dtype == torch.float32
    assert set(symbols[:, 0].tolist()) <= {P, P + 1}
    if T > 1:
        assert symbols[:, 1:].min() >= 0 and symbols[:, 1:].max() < P


def test_label_is_the_sign_of_x0():
    symbols, labels = sign_batch(256, 20, seed=3)
    x = dense_inputs(symbols)  # (B, T, p + 1), explicit, small
    sign = x[:, 0, P]
    assert torch.equal(labels, (sign > 0).float())
    assert torch.all(x[:, 1:, P] == 0)  # only x_0 carries the sign channel
    assert torch.all(x[:, 1:].sum(-1) == 1)  # the rest are one-hots
    assert 0.3 < labels.mean() < 0.7  # both classes occur


def test_deterministic_by_seed_and_step():
    a = sign_batch(4, 100, seed=5, step=9)
    b = sign_batch(4, 100, seed=5, step=9)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], sign_batch(4, 100, seed=5, step=10)[0])
    assert not torch.equal(a[0], sign_batch(4, 100, seed=6, step=9)[0])
    seeds = {batch_seed(s, t) & 0xFFFFFFFF for s in range(20) for t in range(200)}
    assert len(seeds) == 20 * 200  # distinct even in the low 32 bits that mt19937 keeps


def test_distractors_are_uniform():
    symbols, _ = sign_batch(64, 2048, seed=0)
    counts = torch.bincount(symbols[:, 1:].flatten(), minlength=P).float()
    expected = symbols[:, 1:].numel() / P
    assert counts.shape == (P,) and (counts / expected - 1).abs().max() < 0.2  # ~1000 a bin: 3% noise


def test_lookup_equals_one_hot_times_matrix():
    torch.manual_seed(0)
    emb = SignedOneHot(P, 8)
    symbols, _ = sign_batch(3, 9, seed=2)
    torch.testing.assert_close(emb(symbols), dense_inputs(symbols) @ emb.weight)


def test_a_million_steps_without_host_one_hots():
    """At T = 2^20 the batch is 8 bytes a step (the [1, T, 129] one-hots would be 516 MiB)."""
    symbols, labels = sign_batch(1, MAX_T, seed=0, device="cpu")
    assert symbols.shape == (1, MAX_T) and symbols.element_size() * symbols.numel() == 8 * MAX_T
    with pytest.raises(ValueError, match="SignedOneHot"):
        dense_inputs(symbols)


def test_generation_happens_on_the_requested_device_without_host_one_hots(monkeypatch):
    """Nothing on the generation path calls one_hot, and tensors are born on the target device."""
    import torch.nn.functional as F

    def forbidden(*a, **k):
        raise AssertionError("one_hot called while generating a batch")

    monkeypatch.setattr(F, "one_hot", forbidden)
    monkeypatch.setattr(torch.nn.functional, "one_hot", forbidden)
    symbols, labels = sign_batch(2, 64, device="cpu")
    out = SignedOneHot(P, 4)(symbols)
    assert out.shape == (2, 64, 4) and symbols.device.type == labels.device.type == "cpu"


@pytest.mark.gpu
def test_cuda_batches_are_made_on_the_gpu_and_deterministic():
    a = sign_batch(8, 4096, seed=1, step=3, device="cuda")
    b = sign_batch(8, 4096, seed=1, step=3, device="cuda")
    assert a[0].is_cuda and a[1].is_cuda
    assert torch.equal(a[0], b[0])


@pytest.mark.parametrize(
    "kw,match",
    [
        (dict(batch=0, seq_len=5), "batch"),
        (dict(batch=2, seq_len=0), "seq_len"),
        (dict(batch=2, seq_len=MAX_T + 1), "2\\^20"),
        (dict(batch=2, seq_len=5, p=0), "p must"),
        (dict(batch=2, seq_len=5, seed=-1), "seed"),
        (dict(batch=2, seq_len=5, step=-1), "step"),
    ],
)
def test_bad_arguments_raise_value_error(kw, match):
    with pytest.raises(ValueError, match=match):
        sign_batch(**kw)
