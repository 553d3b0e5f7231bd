"""fpcore.scan: every backend against the plain loop, gradients, matrix_scan, bad inputs, CUDA source.

Oracle: :func:`fpcore.scan.ref.loop` in float64 on the inputs *as rounded to the tested dtype*, so the
tolerance measures the backend's accumulation and output rounding, not the input rounding.
"""

from __future__ import annotations

import functools
import shutil
import subprocess
import sys
import warnings

import pytest
import torch
from torch.testing import assert_close

import fpcore
import fpcore.scan as scan_mod
from fpcore.scan import available_backends, linear_scan, matrix_scan, ref
from fpcore.scan.matrix import matrix_loop

CPU_BACKENDS = available_backends("cpu")
LENGTHS = (1, 2, 7, 64, 1000, 4099, 33753)
DTYPES = (torch.float64, torch.float32, torch.float16, torch.bfloat16)
# (rtol, atol) against the float64 oracle, relative to values of order 1-30
TOL = {
    torch.float64: (1e-10, 1e-10),
    torch.float32: (2e-5, 2e-4),
    torch.float16: (2e-3, 2e-3),
    torch.bfloat16: (1.6e-2, 1.6e-2),
}


def _inputs(seed: int, T: int, gates: str, dtype, device="cpu"):
    """Gates: "mixed" in (-1, 1) (negative gates included) or "near_one" in (1 - 1e-3, 1)."""
    g = torch.Generator().manual_seed(1000 * seed + T)
    B, D = (2, 3) if T > 1000 else (3, 5)
    if gates == "mixed":
        a = torch.rand(B, T, D, generator=g, dtype=torch.float64) * 2 - 1
    else:
        a = 1 - 1e-3 * torch.rand(B, T, D, generator=g, dtype=torch.float64)
    b = torch.randn(B, T, D, generator=g, dtype=torch.float64) * 0.1
    h0 = torch.randn(B, D, generator=g, dtype=torch.float64)
    return a.to(dtype).to(device), b.to(dtype).to(device), h0.to(dtype).to(device)


@functools.cache
def _oracle(seed: int, T: int, gates: str, dtype, use_h0: bool, reverse: bool):
    a, b, h0 = _inputs(seed, T, gates, dtype)
    return ref.loop(a.double(), b.double(), h0.double() if use_h0 else None, reverse=reverse)


def _case(seed: int):
    """seed -> (use_h0, reverse): the seeds walk through the four combinations."""
    return bool(seed & 1), bool(seed & 2)


def _skip_slow(request, backend: str, T: int, dtype, seed: int):
    """The cases that only cost time (run them with ``pytest --slow``)."""
    if request.config.getoption("--slow"):
        return
    if backend == "ref" and T > 4099:
        pytest.skip("slow (--slow runs it): the ref loop is the oracle itself")
    if backend in ("hillis_steele", "blelloch") and T > 4099 and (dtype.itemsize == 2 or seed > 1):
        pytest.skip("slow (--slow runs it): teaching tree scans at the longest T, fp32/fp64 and two seeds suffice")


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("T", LENGTHS)
@pytest.mark.parametrize(
    "dtype, seed",
    [(d, s) for d in DTYPES for s in range(4 if d.itemsize > 2 else 2)],
    ids=lambda v: str(v).replace("torch.", ""),
)
@pytest.mark.parametrize("gates", ["mixed", "near_one"])
def test_forward_matches_loop(request, backend, T, dtype, seed, gates):
    _skip_slow(request, backend, T, dtype, seed)
    use_h0, reverse = _case(seed)
    a, b, h0 = _inputs(seed, T, gates, dtype)
    h = linear_scan(a, b, h0 if use_h0 else None, reverse=reverse, backend=backend)
    assert h.shape == a.shape and h.dtype == dtype
    rtol, atol = TOL[dtype]
    expected = _oracle(seed, T, gates, dtype, use_h0, reverse)
    assert_close(h.double(), expected, rtol=rtol, atol=atol)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("T", [1, 6, 70])
@pytest.mark.parametrize("reverse", [False, True])
def test_gradcheck_float64(backend, T, reverse):
    g = torch.Generator().manual_seed(T)
    a = (torch.rand(2, T, 3, generator=g, dtype=torch.float64) * 2 - 1).requires_grad_()
    b = torch.randn(2, T, 3, generator=g, dtype=torch.float64).requires_grad_()
    h0 = torch.randn(2, 3, generator=g, dtype=torch.float64).requires_grad_()
    fn = lambda a, b, h0: linear_scan(a, b, h0, reverse=reverse, backend=backend)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (a, b, h0), fast_mode=T > 10)
    fn0 = lambda a, b: linear_scan(a, b, None, reverse=reverse, backend=backend)  # noqa: E731
    assert torch.autograd.gradcheck(fn0, (a, b), fast_mode=True)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("shape", [(1, 120, 512), (3, 257, 7)], ids=["split-features", "narrow"])
@pytest.mark.parametrize("reverse", [False, True])
def test_fp32_gradients_match_loop_autograd(backend, shape, reverse):
    """Covers the Numba feature-block split (B=1, D=512) and the fused backward in float32."""
    g = torch.Generator().manual_seed(7)
    a = torch.rand(*shape, generator=g) * 2 - 1
    b, gout = torch.randn(*shape, generator=g), torch.randn(*shape, generator=g)
    h0 = torch.randn(shape[0], shape[2], generator=g)
    leaves = [x.clone().requires_grad_() for x in (a, b, h0)]
    grads = torch.autograd.grad(linear_scan(*leaves, reverse=reverse, backend=backend), leaves, gout)
    oracle = [x.double().requires_grad_() for x in (a, b, h0)]
    expected = torch.autograd.grad(ref.loop(*oracle, reverse=reverse), oracle, gout.double())
    for got, exp in zip(grads, expected):
        assert_close(got.double(), exp, rtol=1e-4, atol=1e-4)


def test_backward_is_the_reverse_scan_with_shifted_gates():
    """Paper C, section 2.2: dL/db = reverse scan of dL/dh with gates a_{t+1}; dL/da_t = g_t h_{t-1}."""
    g = torch.Generator().manual_seed(3)
    a = (torch.rand(2, 50, 4, generator=g, dtype=torch.float64) - 0.5).requires_grad_()
    b = torch.randn(2, 50, 4, generator=g, dtype=torch.float64).requires_grad_()
    gout = torch.randn(2, 50, 4, generator=g, dtype=torch.float64)
    h = ref.loop(a, b)
    da, db = torch.autograd.grad(h, (a, b), gout)
    shifted = torch.cat([a[:, 1:], torch.zeros_like(a[:, :1])], dim=1).detach()
    g_scan = ref.loop(shifted, gout, reverse=True)
    h_prev = torch.cat([torch.zeros_like(h[:, :1]), h[:, :-1]], dim=1).detach()
    assert_close(db, g_scan)
    assert_close(da, g_scan * h_prev)


def test_fp32_error_growth_is_modest():
    """fp32 rounding vs float64 at T = 2^14 with long-memory gates stays near float32 epsilon x |h|.

    (The benchmark and notebook 01 measure the growth up to T = 2^20.)
    """
    g = torch.Generator().manual_seed(0)
    a = 1 - 1e-3 * torch.rand(1, 1 << 14, 8, generator=g, dtype=torch.float64)
    b = torch.randn(1, 1 << 14, 8, generator=g, dtype=torch.float64)
    exact = ref.loop(a, b)
    for backend in CPU_BACKENDS:
        if backend == "ref":
            continue
        h = linear_scan(a.float(), b.float(), backend=backend).double()
        rel = ((h - exact).abs().max() / exact.abs().max()).item()
        assert rel < 2e-5, (backend, rel)


def test_auto_picks_numba_on_cpu_when_installed():
    if "numba" not in CPU_BACKENDS:
        pytest.skip("numba not installed")
    assert scan_mod._choose("auto", torch.device("cpu")) == "numba"


def test_auto_falls_back_with_one_warning(monkeypatch):
    monkeypatch.setitem(scan_mod._AUTO, "cpu", ("cupy", "torch"))  # pretend the fast path is missing
    monkeypatch.setattr(scan_mod, "_warned", set())
    a, b, _ = _inputs(0, 64, "mixed", torch.float32)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        h1 = linear_scan(a, b)
        h2 = linear_scan(a, b)
    assert len([w for w in caught if issubclass(w.category, RuntimeWarning)]) == 1
    assert "torch" in str(caught[0].message)
    assert_close(h1, h2)
    assert_close(h1.double(), ref.loop(a.double(), b.double()), rtol=2e-5, atol=2e-5)


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: (torch.rand(2, 5, 3), torch.rand(2, 5, 4), None), "same shape"),
        (lambda: (torch.rand(2, 5), torch.rand(2, 5), None), r"\[B, T, D\]"),
        (lambda: (torch.rand(2, 0, 3), torch.rand(2, 0, 3), None), "T = 0"),
        (lambda: (torch.ones(2, 5, 3, dtype=torch.int64), torch.ones(2, 5, 3, dtype=torch.int64), None), "floating"),
        (lambda: (torch.rand(2, 5, 3), torch.rand(2, 5, 3, dtype=torch.float64), None), "dtype"),
        (lambda: (torch.rand(2, 5, 3), torch.rand(2, 5, 3), torch.rand(3, 3)), "h0 must be"),
        (lambda: (torch.rand(2, 5, 3), torch.rand(2, 5, 3), torch.rand(2, 3, dtype=torch.float64)), "h0 must have"),
        (lambda: (torch.rand(2, 5, 3), torch.rand(2, 5, 3, device="meta"), None), "devices"),
        (lambda: (torch.rand(2, 5, 3), torch.rand(2, 5, 3), torch.rand(2, 3, device="meta")), "h0 is on"),
    ],
    ids=["shape", "rank", "T=0", "int", "mixed-dtype", "h0-shape", "h0-dtype", "device", "h0-device"],
)
def test_bad_inputs_raise_value_error(make, match):
    a, b, h0 = make()
    with pytest.raises(ValueError, match=match):
        linear_scan(a, b, h0)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
@pytest.mark.parametrize(
    "gate, b, h0",
    [(1.5, 0.0, 0.0), (1.5, 1.0, 0.0), (-1.5, 1.0, 0.0), (1.5, 0.0, 1e-30), (0.5, 0.0, float("inf"))],
    ids=["zero-state", "overflow", "overflow-alternating", "tiny-h0", "inf-h0"],
)
@pytest.mark.parametrize("reverse", [False, True])
def test_overflowing_gate_products_give_what_the_loop_gives(backend, dtype, gate, b, h0, reverse):
    """a = 1.5, b = 0: the state stays 0 while the product of the gates overflows (inf * 0 is NaN in a
    chunked or tree scan); with b = 1 the state itself overflows to inf. Every backend must give the loop's
    answer: the same zeros, the same infinities, the same finite values, and no NaN."""
    if backend == "ref":
        pytest.skip("the ref loop is the oracle itself")
    T = 4099  # the torch backend's inner chunks span 576 steps: their gate products overflow
    if dtype == torch.float64:
        gate = gate**4  # and in float64 too
    a = torch.full((2, T, 3), gate, dtype=dtype)
    bb = torch.full((2, T, 3), b, dtype=dtype)
    start = torch.full((2, 3), h0, dtype=dtype)
    got = linear_scan(a, bb, start, reverse=reverse, backend=backend)
    want = ref.loop(a, bb, start, reverse=reverse)
    assert not want.isnan().any()  # the loop never forms 0 * inf here
    assert torch.equal(got.isnan(), want.isnan())
    assert torch.equal(got.isinf(), want.isinf()) and torch.equal(got.sign(), want.sign())
    finite = want.isfinite()
    assert_close(got[finite], want[finite], rtol=1e-2 if dtype == torch.float32 else 1e-9, atol=0)


@pytest.mark.parametrize("gate, b", [(1.5, 0.0), (1.5, 1.0)], ids=["zero-state", "overflow"])
def test_matrix_scan_overflowing_products_give_what_the_loop_gives(gate, b):
    T, D = 4099, 2
    A = (gate * torch.eye(D)).expand(1, T, D, D)
    bb = torch.full((1, T, D), b)
    got, want = matrix_scan(A, bb), matrix_loop(A, bb)
    # (once the state is inf, the dense loop's own matvec meets 0 * inf: its NaN is the answer to match)
    assert (b == 1.0) or not want.isnan().any()
    assert torch.equal(got.isnan(), want.isnan()) and torch.equal(got.isinf(), want.isinf())
    assert_close(got[want.isfinite()], want[want.isfinite()], rtol=1e-2, atol=0)


def test_arguments_that_are_not_tensors_raise_type_error():
    a = torch.rand(2, 5, 3)
    with pytest.raises(TypeError, match="h0 must be a torch.Tensor or None, got list"):
        linear_scan(a, a, [[0.0] * 3] * 2)
    with pytest.raises(TypeError, match="b must be a torch.Tensor, got float"):
        linear_scan(a, 1.0)
    A = torch.rand(2, 5, 3, 3)
    with pytest.raises(TypeError, match="h0 must be a torch.Tensor or None, got list"):
        matrix_scan(A, a, [[0.0] * 3] * 2)
    with pytest.raises(TypeError, match="A must be a torch.Tensor, got list"):
        matrix_scan([1.0], a)


def test_bad_backend_raises_value_error():
    a = torch.rand(1, 4, 2)
    with pytest.raises(ValueError, match="unknown backend"):
        linear_scan(a, a, backend="nope")
    with pytest.raises(ValueError, match="cuda"):
        linear_scan(a, a, backend="cupy")  # a CPU tensor for a CUDA-only backend
    with pytest.raises(ValueError, match="bool"):
        linear_scan(a, a, reverse=1)


def test_public_export_and_registry():
    assert fpcore.linear_scan is linear_scan
    assert set(CPU_BACKENDS) >= {"ref", "hillis_steele", "blelloch", "torch"}
    assert "cupy" not in CPU_BACKENDS
    cuda = available_backends("cuda")
    assert set(cuda) <= set(scan_mod.BACKENDS) and "numba" not in cuda


def test_import_is_light():
    """Importing fpcore and fpcore.scan imports neither Numba nor CuPy, so nothing compiles."""
    code = (
        "import sys, fpcore, fpcore.scan; fpcore.linear_scan; "
        "print(int('numba' in sys.modules), int('cupy' in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["0", "0"]


def test_tree_scans_record_their_steps():
    a, b, _ = _inputs(0, 8, "mixed", torch.float64)
    hs, bl = [], []
    ref.hillis_steele(a, b, record=hs)
    ref.blelloch(a, b, record=bl)
    assert [s["offset"] for s in hs] == [1, 2, 4]
    assert hs[0]["pairs"][0] == (0, 1) and len(hs[2]["pairs"]) == 4
    assert [s["phase"] for s in bl] == ["up"] * 3 + ["down"] * 3
    assert bl[2]["pairs"] == [(3, 7)] and bl[3]["pairs"] == [(3, 7)]


def test_associative_operator():
    g = torch.Generator().manual_seed(0)
    x, y, z = [
        (torch.randn(4, generator=g, dtype=torch.float64), torch.randn(4, generator=g, dtype=torch.float64))
        for _ in range(3)
    ]
    left = ref.combine(ref.combine(x, y), z)
    right = ref.combine(x, ref.combine(y, z))
    assert_close(left, right)


# --- matrix_scan


@pytest.mark.parametrize("T", [1, 7, 100, 333])
@pytest.mark.parametrize("use_h0", [False, True])
def test_matrix_scan_matches_loop(T, use_h0):
    g = torch.Generator().manual_seed(T)
    A = torch.randn(2, T, 4, 4, generator=g, dtype=torch.float64) * 0.4
    b = torch.randn(2, T, 4, generator=g, dtype=torch.float64)
    h0 = torch.randn(2, 4, generator=g, dtype=torch.float64) if use_h0 else None
    assert_close(matrix_scan(A, b, h0), matrix_loop(A, b, h0))
    h32 = matrix_scan(A.float(), b.float(), None if h0 is None else h0.float())
    assert h32.dtype == torch.float32
    assert_close(h32.double(), matrix_loop(A, b, h0), rtol=1e-4, atol=1e-4)


def test_matrix_scan_gradients():
    g = torch.Generator().manual_seed(1)
    A = (torch.randn(1, 40, 3, 3, generator=g, dtype=torch.float64) * 0.4).requires_grad_()
    b = torch.randn(1, 40, 3, generator=g, dtype=torch.float64).requires_grad_()
    h0 = torch.randn(1, 3, generator=g, dtype=torch.float64).requires_grad_()
    gout = torch.randn(1, 40, 3, generator=g, dtype=torch.float64)
    got = torch.autograd.grad(matrix_scan(A, b, h0), (A, b, h0), gout)
    exp = torch.autograd.grad(matrix_loop(A, b, h0), (A, b, h0), gout)
    for x, y in zip(got, exp):
        assert_close(x, y)
    small = [x.detach()[:, :20].clone().requires_grad_() for x in (A, b)] + [h0.detach().clone().requires_grad_()]
    assert torch.autograd.gradcheck(matrix_scan, tuple(small), fast_mode=True)


def test_matrix_scan_diagonal_equals_linear_scan():
    a, b, h0 = _inputs(0, 500, "mixed", torch.float64)
    A = torch.diag_embed(a)  # (B, T, D, D)
    assert_close(matrix_scan(A, b, h0), linear_scan(a, b, h0, backend="ref"))


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: (torch.rand(2, 5, 3, 3), torch.rand(2, 5, 4)), "A must be"),
        (lambda: (torch.rand(2, 0, 3, 3), torch.rand(2, 0, 3)), "T = 0"),
        (lambda: (torch.ones(2, 5, 3, 3, dtype=torch.int64), torch.ones(2, 5, 3, dtype=torch.int64)), "floating"),
        (lambda: (torch.rand(2, 5, 3, 3), torch.rand(2, 5, 3, device="meta")), "on"),
    ],
    ids=["shape", "T=0", "int", "device"],
)
def test_matrix_scan_bad_inputs(make, match):
    A, b = make()
    with pytest.raises(ValueError, match=match):
        matrix_scan(A, b)


# --- CUDA: source compiled by nvcc wherever nvcc exists; kernels run where a GPU exists


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc not on the PATH")
@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
def test_cuda_source_compiles_with_nvcc(tmp_path, arch):
    from fpcore.scan import cupy_backend

    ptx = tmp_path / f"scan_{arch}.ptx"
    run = subprocess.run(
        ["nvcc", "--ptx", f"-arch={arch}", "-Werror", "all-warnings", "-o", str(ptx), str(cupy_backend.SOURCE)],
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stderr
    text = ptx.read_text()
    for suffix in ("f32", "f64", "f16", "bf16"):
        assert f".entry scan_main_{suffix}" in text and f".entry scan_reduce_{suffix}" in text
    src = cupy_backend.SOURCE.read_text()  # the host code's tile constants must match the kernel's
    assert f"#define FPCORE_W {cupy_backend.W}" in src and f"#define FPCORE_L {cupy_backend.L}" in src


@pytest.mark.parametrize(
    "B, T, D, sms", [(8, 65536, 1536, 132), (1, 1 << 20, 16, 132), (1, 7, 3, 132), (4, 33753, 64, 15)]
)
def test_cupy_launch_config_covers_T(B, T, D, sms):
    from fpcore.scan import cupy_backend

    groups, span = cupy_backend.launch_config(B, T, D, sms)
    assert 1 <= groups <= 256 and span % (cupy_backend.W * cupy_backend.L) == 0
    assert (groups - 1) * span < T <= groups * span
    if B * -(-D // 32) >= 2 * sms:
        assert groups == 1  # enough blocks already: one pass over memory


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["cupy", "torch"])
@pytest.mark.parametrize("T", LENGTHS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_cuda_forward_matches_loop(backend, T, dtype, seed):
    if backend not in available_backends("cuda"):
        pytest.skip(f"{backend} not available on CUDA here")
    use_h0, reverse = _case(seed)
    a, b, h0 = _inputs(seed, T, "mixed" if seed < 2 else "near_one", dtype, device="cuda")
    h = linear_scan(a, b, h0 if use_h0 else None, reverse=reverse, backend=backend)
    rtol, atol = TOL[dtype]
    expected = _oracle(seed, T, "mixed" if seed < 2 else "near_one", dtype, use_h0, reverse)
    assert_close(h.double().cpu(), expected, rtol=rtol, atol=atol)


@pytest.mark.gpu
@pytest.mark.parametrize("shape", [(2, 6, 3), (1, 700, 40), (1, 5000, 8)])
@pytest.mark.parametrize("reverse", [False, True])
def test_cuda_gradcheck_float64(shape, reverse):
    if "cupy" not in available_backends("cuda"):
        pytest.skip("cupy not available")
    g = torch.Generator().manual_seed(0)
    a = (torch.rand(*shape, generator=g, dtype=torch.float64) * 2 - 1).cuda().requires_grad_()
    b = torch.randn(*shape, generator=g, dtype=torch.float64).cuda().requires_grad_()
    h0 = torch.randn(shape[0], shape[2], generator=g, dtype=torch.float64).cuda().requires_grad_()
    fn = lambda a, b, h0: linear_scan(a, b, h0, reverse=reverse, backend="cupy")  # noqa: E731
    assert torch.autograd.gradcheck(fn, (a, b, h0), fast_mode=True)


@pytest.mark.gpu
def test_cuda_runs_on_the_current_stream_and_auto_picks_cupy():
    if "cupy" not in available_backends("cuda"):
        pytest.skip("cupy not available")
    assert scan_mod._choose("auto", torch.device("cuda")) == "cupy"
    a, b, _ = _inputs(0, 4099, "mixed", torch.float32, device="cuda")
    side = torch.cuda.Stream()
    with torch.cuda.stream(side):
        h = linear_scan(a, b)
    side.synchronize()
    assert_close(h.double().cpu(), _oracle(0, 4099, "mixed", torch.float32, False, False), rtol=2e-5, atol=2e-4)
