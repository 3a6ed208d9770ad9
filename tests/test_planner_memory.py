"""The affine client memory model and its JSON round trip."""

import json

import numpy as np
import pytest

from zorba.memory.memory_model import MemoryModel


def test_memory_is_affine_in_the_plan():
    mem = MemoryModel(base=np.array([100.0, 200.0]), delta=np.array([10.0, 20.0, 30.0]), activation=5.0)
    A = np.array([[1, 0, 1], [0, 1, 0]], bool)
    np.testing.assert_allclose(mem.client_memory(A), [100 + 10 + 30 + 5, 200 + 20 + 5])
    assert mem.total_memory(A) == pytest.approx(145 + 225)


def test_first_principles_default_counts_bytes_per_parameter():
    mem = MemoryModel.from_block_sizes([1000, 3000], activation_bytes=7.0, z_buffer_params=10)
    # everything frozen in bf16 (2 B) + fp32 z buffer; an active block swaps bf16 for fp32 weights plus
    # a byte of promotion overhead (the round-start copy is the off-heap store, not a snapshot in memory)
    assert mem.base == pytest.approx(2 * 4000 + 4 * 10)
    np.testing.assert_allclose(mem.delta, [3 * 1000, 3 * 3000])
    all_active = mem.client_memory(np.ones((1, 2), bool))[0]
    assert all_active == pytest.approx(5 * 4000 + 40 + 7.0)


def test_round_trips_through_json():
    mem = MemoryModel(base=np.array([1.5, 2.5]), delta=np.array([3.0, 4.0]), activation=np.array([0.5, 0.25]))
    back = MemoryModel.from_dict(json.loads(json.dumps(mem.to_dict())))
    A = np.array([[1, 0], [1, 1]], bool)
    np.testing.assert_allclose(back.client_memory(A), mem.client_memory(A))
    scalar = MemoryModel(base=3.0, delta=np.array([1.0]))
    assert MemoryModel.from_dict(json.loads(json.dumps(scalar.to_dict()))).base == 3.0


def test_subset_keeps_per_client_parts():
    mem = MemoryModel(
        base=np.array([1.0, 2.0, 3.0]), delta=np.array([1.0]), activation=np.array([10.0, 20.0, 30.0])
    )
    np.testing.assert_allclose(mem.subset([2, 0]).fixed(2), [33.0, 11.0])


def test_rejects_negative_block_costs():
    with pytest.raises(ValueError):
        MemoryModel(base=0.0, delta=np.array([1.0, -1.0]))


def test_a_calibration_plans_with_its_measured_error_as_headroom(tmp_path):
    """A least-squares fit predicts some sets below their measurement; scaled by its largest measured
    error, every prediction it was fitted on is an upper bound, so a budget it plans to holds."""
    from types import SimpleNamespace

    from zorba.federation.config import make_config
    from zorba.federation.runner import client_memory_model

    measured = {(): 1000.0, (0,): 1110.0, (0, 1): 1190.0}  # not exactly affine
    x = np.array([0.0, 100.0, 200.0])
    slope, intercept = np.polyfit(x, list(measured.values()), 1)
    fit = MemoryModel(intercept, np.array([100.0, 100.0]) * slope)
    error = max(abs(fit.client_memory(np.array([[i > 0, i > 1]]))[0] / m - 1) for i, m in enumerate(measured.values()))
    path = tmp_path / "mm.json"
    path.write_text(json.dumps({**fit.to_dict(), "max_abs_error": error}))
    lm = SimpleNamespace(blocks=[None, None])
    planned = client_memory_model(make_config(memory_model=str(path)), lm)
    for i, m in enumerate(measured.values()):
        A = np.array([[i > 0, i > 1]])
        assert planned.client_memory(A)[0] >= m - 1e-9
    # without the headroom the fit predicts some measured set below its measurement
    assert any(fit.client_memory(np.array([[i > 0, i > 1]]))[0] < m for i, m in enumerate(measured.values()))
