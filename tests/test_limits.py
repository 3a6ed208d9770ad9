"""Resource limits are checked from headers and counts before anything is decoded or allocated, and
decoders refuse non-finite or absurd learning rates and perturbation scales."""

import math
import struct
import time

import pytest

from zorba.core.data import dirichlet_partition
from zorba.errors import UserError
from zorba.memory.profiles import load_profiles
from zorba.wire import codec
from zorba.wire.protocol import Hyper, LogEntry, RoundPlan

PLANS = {0: RoundPlan(0, 0, (0,), 5, Hyper(1e-3, 1e-3, 1, 5))}


def test_a_long_report_is_refused_from_its_length_before_decoding():
    data = b"ZR2" + struct.pack("<IIfB", 0, 0, 0.5, 0) + bytes(4 << 20)
    started = time.perf_counter()
    with pytest.raises(codec.DecodeError, match="expected 5 steps x 1 float32"):
        codec.decode_report(data, PLANS)
    assert time.perf_counter() - started < 0.5


def test_a_report_nobody_asked_for_is_refused_before_decoding():
    for client, rnd in ((1, 0), (0, 3)):
        data = b"ZR2" + struct.pack("<IIfB", rnd, client, 0.5, 0) + bytes(20)
        with pytest.raises(codec.DecodeError, match="no plan"):
            codec.decode_report(data, PLANS)


def test_profile_count_is_checked_before_the_list_is_built(tmp_path):
    path = tmp_path / "p.toml"
    path.write_text('[[profile]]\nmemory_mib = 500\ncount = 10000000000\n')
    started = time.perf_counter()
    with pytest.raises(UserError, match="10000000000 clients, the run has 8"):
        load_profiles(path, 8)
    assert time.perf_counter() - started < 1


def test_an_impossible_federation_is_refused_in_seconds(data_dir):
    lines = (data_dir / "sst2" / "train.tsv").read_text().splitlines()[1:]
    labels = [int(line.split("\t")[0]) for line in lines]
    started = time.perf_counter()
    with pytest.raises(UserError, match="60000 clients"):
        dirichlet_partition(labels, 60000, 0.5, 0)
    assert time.perf_counter() - started < 10


def test_the_cli_refuses_an_impossible_federation_before_loading_the_model(zorba, data_dir, tmp_path):
    started = time.perf_counter()
    res = zorba("run", "--clients", "60000", "--model", "/no/such/model", "--data-dir", str(data_dir),
                "--out", str(tmp_path / "out"))
    assert res.returncode == 2 and "60000 clients" in res.stderr, res.stderr
    assert time.perf_counter() - started < 30 and not (tmp_path / "out").exists()


@pytest.mark.parametrize("lr", [math.nan, math.inf, -1e-3, 0.0, 1e9])
def test_entries_with_a_bad_lr_are_refused(lr):
    raw = codec.encode_entry(LogEntry(0, lr, 1, "rademacher", ()))
    with pytest.raises(codec.DecodeError, match="lr"):
        codec.decode_entry(raw)


@pytest.mark.parametrize("field,value", [("lr", math.nan), ("lr", math.inf), ("lr", 1e9), ("mu", math.nan),
                                         ("mu", math.inf), ("mu", 1e9)])
def test_plans_with_a_bad_lr_or_mu_are_refused(field, value):
    hyper = Hyper(**{**dict(lr=1e-3, mu=1e-3, q=1, local_steps=1, batch_size=4, dist="rademacher"), field: value})
    raw = codec.encode_plan(RoundPlan(0, 0, (0,), 1, hyper, ()))
    with pytest.raises(codec.DecodeError, match=field):
        codec.decode_plan(raw)
