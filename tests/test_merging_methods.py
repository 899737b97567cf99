"""Each merge formula against an independent float64 recomputation on random tensors."""

from __future__ import annotations

import math

import pytest
import torch

from tunesmith.merging.methods import TensorParams, get_method
from tunesmith.merging.methods.slerp import slerp


def params(name="model.layers.0.mlp.up_proj.weight", weights=(1.0, 1.0, 1.0), densities=(1.0, 1.0, 1.0), **opts):
    return TensorParams(name, list(weights), list(densities), opts)


def run(method, tensors, base, p):
    """Methods may work in place on their inputs: give them copies."""
    method = get_method(method)
    options = {**method.options, **p.options}
    p = TensorParams(p.name, p.weights, p.densities, options)
    return method.merge([t.clone() for t in tensors], None if base is None else base.clone(), p)


@pytest.fixture
def tensors():
    g = torch.Generator().manual_seed(0)
    return [torch.randn(7, 11, generator=g, dtype=torch.float64) for _ in range(3)]


def test_linear_normalised_and_raw(tensors):
    w = (0.5, 0.3, 0.2 * 3)
    out = run("linear", tensors, None, params(weights=w))
    expected = sum(wi * t for wi, t in zip(w, tensors)) / sum(w)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-12)
    out = run("linear", tensors, None, params(weights=w, normalize=False))
    torch.testing.assert_close(out, sum(wi * t for wi, t in zip(w, tensors)), rtol=0, atol=1e-12)


def _slerp_reference(t, a, b):
    """Elementwise, from the geometric definition: rotate in the plane of a and b by t·Ω."""
    ua, ub = a.flatten() / a.norm(), b.flatten() / b.norm()
    omega = math.acos(float(ua @ ub))
    return (math.sin((1 - t) * omega) * a + math.sin(t * omega) * b) / math.sin(omega)


@pytest.mark.parametrize("t", [0.0, 0.25, 0.5, 0.9, 1.0])
def test_slerp_matches_definition_and_endpoints(tensors, t):
    a, b = tensors[0], tensors[1]
    out = run("slerp", [a, b], None, params(weights=(), densities=(), t=t))
    torch.testing.assert_close(out, _slerp_reference(t, a, b), rtol=0, atol=1e-12)
    if t == 0:
        torch.testing.assert_close(out, a)
    if t == 1:
        torch.testing.assert_close(out, b)


def test_slerp_stays_on_the_sphere_for_unit_vectors(tensors):
    a, b = tensors[0] / tensors[0].norm(), tensors[1] / tensors[1].norm()
    omega = math.acos(float((a * b).sum()))
    out = slerp(0.3, a.clone(), b.clone())
    assert float(out.norm()) == pytest.approx(1.0, abs=1e-12)
    assert math.acos(float((out * a).sum())) == pytest.approx(0.3 * omega, abs=1e-9)


def test_slerp_falls_back_to_linear_when_nearly_parallel(tensors):
    a = tensors[0]
    b = a * 2 + 1e-6 * tensors[1]
    torch.testing.assert_close(slerp(0.4, a.clone(), b.clone()), 0.6 * a + 0.4 * b, rtol=0, atol=1e-12)
    torch.testing.assert_close(slerp(0.4, a.clone(), -a.clone()), 0.6 * a - 0.4 * a, rtol=0, atol=1e-12)


def test_task_arithmetic_with_negative_weight_and_scale(tensors):
    base, a, b = tensors
    out = run("task_arithmetic", [a, b], base, params(weights=(1.2, -0.5), scale=0.7))
    torch.testing.assert_close(out, base + 0.7 * (1.2 * (a - base) - 0.5 * (b - base)), rtol=0, atol=1e-12)
    # Subtracting a model's own task vector from it gives back the base.
    out = run("task_arithmetic", [a, a], base, params(weights=(1.0, -1.0)))
    torch.testing.assert_close(out, base, rtol=0, atol=1e-12)


def _ties_reference(base, models, weights, densities, scale=1.0, normalize=True):
    """Per-parameter loops straight from the paper (trim → elect → disjoint mean)."""
    n = base.numel()
    trimmed = []
    for m, d in zip(models, densities):
        delta = (m - base).flatten().tolist()
        k = max(1, int(d * n))
        keep = set(sorted(range(n), key=lambda i: -abs(delta[i]))[:k])
        trimmed.append([delta[i] if i in keep else 0.0 for i in range(n)])
    out = base.flatten().clone()
    for i in range(n):
        total = sum(w * t[i] for w, t in zip(weights, trimmed))
        sign = (total > 0) - (total < 0)
        agree = [(w, t[i]) for w, t in zip(weights, trimmed) if t[i] != 0 and ((w * t[i] > 0) - (w * t[i] < 0)) == sign]
        if agree:
            out[i] += scale * sum(w * v for w, v in agree) / (sum(w for w, _ in agree) if normalize else 1)
    return out.reshape(base.shape)


@pytest.mark.parametrize("densities,weights", [((0.5, 0.3), (1.0, 1.0)), ((0.2, 0.9), (0.7, 0.4)), ((1.0, 1.0), (1, 1))])
def test_ties_matches_the_paper(tensors, densities, weights):
    base, a, b = tensors
    c = base + torch.randn_like(base) * 0.1
    out = run("ties", [a, b, c], base, params(weights=(*weights, 0.5), densities=(*densities, 0.6), scale=0.9))
    expected = _ties_reference(base, [a, b, c], (*weights, 0.5), (*densities, 0.6), scale=0.9)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-12)


def test_ties_without_normalisation_sums_the_agreeing_entries(tensors):
    base, a, b = tensors
    out = run("ties", [a, b], base, params(weights=(0.8, 0.6), densities=(0.4, 0.7), normalize=False))
    expected = _ties_reference(base, [a, b], (0.8, 0.6), (0.4, 0.7), normalize=False)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-12)


def test_ties_does_not_average_over_zeros(tensors):
    """The reference sketch divides by the number of models; TIES divides by the models that agree."""
    base = torch.zeros(4, dtype=torch.float64)
    a = torch.tensor([1.0, 0.0, 0.0, 0.0], dtype=torch.float64)
    b = torch.tensor([0.0, 0.0, 0.0, 2.0], dtype=torch.float64)
    out = run("ties", [a, b], base, params(weights=(1, 1), densities=(1, 1)))
    torch.testing.assert_close(out, torch.tensor([1.0, 0.0, 0.0, 2.0], dtype=torch.float64))


def test_dare_drops_with_probability_p_and_rescales():
    base = torch.zeros(200_000, dtype=torch.float64)
    model = torch.full_like(base, 0.5)
    out = run("dare_linear", [model], base, params(weights=(1.0,), densities=(0.3,), seed=7)) - base
    kept = out != 0
    assert kept.double().mean().item() == pytest.approx(0.3, abs=0.005)
    torch.testing.assert_close(out[kept], torch.full_like(out[kept], 0.5 / 0.3), rtol=0, atol=1e-12)
    assert out.mean().item() == pytest.approx(0.5, abs=0.01)  # unbiased: E[dropped δ] = δ


def test_dare_is_seeded_per_tensor_and_model(tensors):
    base, a, b = tensors
    p = params(weights=(1.0, 1.0), densities=(0.5, 0.5), seed=3)
    first = run("dare_linear", [a, b], base, p)
    torch.testing.assert_close(run("dare_linear", [a, b], base, p), first, rtol=0, atol=0)
    other_seed = run("dare_linear", [a, b], base, params(weights=(1.0, 1.0), densities=(0.5, 0.5), seed=4))
    assert not torch.equal(first, other_seed)
    other_tensor = run("dare_linear", [a, b], base, params(name="x", weights=(1.0, 1.0), densities=(0.5, 0.5), seed=3))
    assert not torch.equal(first, other_tensor)


def test_dare_combines_with_linear_and_ties(tensors):
    """Recompute the masks from the same seeded streams, then apply task arithmetic / TIES by hand."""
    base, a, b = tensors
    p = params(weights=(0.6, 0.8), densities=(0.4, 0.7), seed=11)
    dropped = []
    for i, (m, d) in enumerate(zip([a, b], p.densities)):
        keep = torch.rand(base.shape, generator=p.generator(i), dtype=torch.float32) < d
        dropped.append((m - base) * keep / d)
    linear = run("dare_linear", [a, b], base, p)
    torch.testing.assert_close(linear, base + 0.6 * dropped[0] + 0.8 * dropped[1], rtol=0, atol=1e-12)
    ties = run("dare_ties", [a, b], base, p)
    expected = _ties_reference(base, [base + dropped[0], base + dropped[1]], (0.6, 0.8), (1.0, 1.0))
    torch.testing.assert_close(ties, expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize("k_share", [1e-6, 0.01, 0.3, 0.5, 0.999])
def test_kth_largest_is_exact_on_big_tensors(k_share):
    from tunesmith.merging.methods.ties import kth_largest

    values = torch.randn(1_200_000, generator=torch.Generator().manual_seed(1)).abs()
    values[:1000] = 0.5  # ties, and a cluster the sample must handle
    k = max(1, int(k_share * values.numel()))
    assert kth_largest(values, k) == torch.kthvalue(values, values.numel() - k + 1).values
