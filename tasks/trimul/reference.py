"""TriMul (GPU MODE ``problems/bioml/trimul``): AlphaFold's outgoing triangle multiplicative
update, its seeded input generator and the exact correctness check.

reference: LayerNorm(dim) on x [bs, N, N, dim]; five bias-free projections dim -> H=128 (left,
right, left gate, right gate, out gate); left/right times the mask [bs, N, N] and their sigmoid
gates; out[b,i,j,h] = sum_k left[b,i,k,h] * right[b,j,k,h]; LayerNorm(H); times the sigmoid out
gate; projection H -> dim. Correct if every element has |out - ref| <= 2e-2 + 2e-2 |ref| and the
NaN/inf positions match.
"""

from __future__ import annotations

import math
from typing import Literal

import torch

__all__ = ["HIDDEN", "TEST_SHAPES", "RANKED", "generate_input", "reference", "check"]

HIDDEN = 128
# (N, bs, dim) of the 18 test cases (each masked and unmasked, normal and Cauchy in the suite)
TEST_SHAPES = [(32, 1, 128), (64, 2, 256), (128, 1, 768), (256, 1, 128), (768, 2, 128), (1024, 1, 384), (1024, 1, 768)]
# (N, bs, dim, masked, distribution) of the 7 ranked benchmarks
RANKED = [
    (256, 2, 128, False, "normal"), (768, 1, 128, False, "cauchy"), (256, 2, 384, True, "normal"),
    (512, 1, 128, False, "normal"), (1024, 1, 128, False, "cauchy"), (768, 1, 384, True, "normal"),
    (1024, 1, 384, False, "normal"),
]


def generate_input(
    n: int, bs: int, dim: int, *, masked: bool, dist: Literal["normal", "cauchy"], seed: int, device: str = "cpu"
) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """x [bs, N, N, dim] float32, mask [bs, N, N] (int64 0/1 when masked, float32 ones when not),
    and the weights, all from ``seed``, drawn on ``device`` (a seed draws other numbers on a GPU
    than on the CPU; each device's draws are deterministic)."""
    g = torch.Generator(device=device).manual_seed(seed)  # on the device: a GPU draws N=1024 inputs in milliseconds
    if dist == "normal":
        x = torch.randn(bs, n, n, dim, generator=g, device=device)
    else:
        x = torch.empty(bs, n, n, dim, device=device).cauchy_(median=0.0, sigma=2.0, generator=g)
    mask = (torch.randint(0, 2, (bs, n, n), generator=g, dtype=torch.int64, device=device) if masked
            else torch.ones(bs, n, n, device=device))
    h = HIDDEN

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g, device=device)

    w = {
        "norm.weight": randn(dim),
        "norm.bias": randn(dim),
        "left_proj.weight": randn(h, dim) / math.sqrt(h),
        "right_proj.weight": randn(h, dim) / math.sqrt(h),
        "left_gate.weight": randn(h, dim) / math.sqrt(h),
        "right_gate.weight": randn(h, dim) / math.sqrt(h),
        "out_gate.weight": randn(h, dim) / math.sqrt(h),
        "to_out_norm.weight": randn(h),
        "to_out_norm.bias": randn(h),
        "to_out.weight": randn(dim, h) / math.sqrt(dim),
    }
    return x, mask, w


def reference(x: torch.Tensor, mask: torch.Tensor, w: dict[str, torch.Tensor]) -> torch.Tensor:
    dim = x.shape[-1]
    x = torch.nn.functional.layer_norm(x, (dim,), w["norm.weight"], w["norm.bias"])
    m = mask.unsqueeze(-1).to(x.dtype)
    left = (x @ w["left_proj.weight"].T) * m * torch.sigmoid(x @ w["left_gate.weight"].T)
    right = (x @ w["right_proj.weight"].T) * m * torch.sigmoid(x @ w["right_gate.weight"].T)
    out = torch.einsum("bikh,bjkh->bijh", left, right)
    out = torch.nn.functional.layer_norm(out, (HIDDEN,), w["to_out_norm.weight"], w["to_out_norm.bias"])
    out = out * torch.sigmoid(x @ w["out_gate.weight"].T)
    return out @ w["to_out.weight"].T


def check(out: torch.Tensor, ref: torch.Tensor, *, rtol: float = 2e-2, atol: float = 2e-2) -> tuple[bool, str]:
    """(correct?, why): shape, NaN/inf positions, then the elementwise tolerance."""
    if tuple(out.shape) != tuple(ref.shape):
        return False, f"shape {tuple(out.shape)} != reference shape {tuple(ref.shape)}"
    out, ref = out.detach().float().cpu(), ref.detach().float().cpu()
    for name, fn in (("NaN", torch.isnan), ("inf", torch.isinf)):
        if not torch.equal(fn(out), fn(ref)):
            return False, f"{name} positions differ from the reference"
    finite = torch.isfinite(ref)
    diff = (out - ref).abs()
    bad = finite & (diff > atol + rtol * ref.abs())
    if bad.any():
        idx = tuple(int(i) for i in bad.nonzero()[0])
        return False, (f"{int(bad.sum())} of {ref.numel()} elements outside |out - ref| <= {atol} + {rtol}|ref|; "
                       f"first at {idx}: {float(out[idx]):.6g} vs {float(ref[idx]):.6g}")
    return True, "all elements within tolerance"
