"""The memory-model fit behind `zorba profile-memory`, and its input errors."""

import subprocess
import sys

import numpy as np
import pytest

from zorba.cli.profile import fit_affine, to_memory_model
from zorba.errors import UserError


def test_fit_recovers_an_affine_law_and_builds_the_planner_model():
    sizes = [1_000_000, 400_000, 400_000, 200_000]
    truth = lambda active: 5e8 + 6.0 * active  # noqa: E731
    x = [sum(sizes[:k]) for k in range(5)]
    noise = np.array([1e5, -2e5, 0, 3e5, -1e5])
    fit = fit_affine(x, [truth(v) + e for v, e in zip(x, noise, strict=True)], activation=1e7)
    assert fit.per_param == pytest.approx(6.0, rel=0.2)
    assert abs(fit.predict(1_200_000) / truth(1_200_000) - 1) < 1e-3
    mem = to_memory_model(fit, sizes)
    assert mem.n_blocks == 4 and mem.activation == 1e7
    A = np.array([[1, 0, 1, 0]])
    assert mem.client_memory(A)[0] == pytest.approx(fit.predict(1_400_000))


def test_fit_needs_two_points():
    with pytest.raises(UserError):
        fit_affine([1.0], [2.0])


def test_cli_rejects_unknown_precision_with_exit_2():
    proc = subprocess.run([sys.executable, "-m", "zorba", "profile-memory", "--model", "random:bert-tiny",
                           "--precision", "int3"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "unknown precision" in proc.stderr
