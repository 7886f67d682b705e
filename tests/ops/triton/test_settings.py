"""Launch settings set from a sweep.json or a dict: checked before anything changes, restored by `using`."""
import json
import os
import subprocess
import sys
import warnings

import pytest
import torch

from tost_edge.ops.triton import causal_tssa as ct, linear_attention as la, settings, tssa as tt


@pytest.fixture(autouse=True)
def restore_settings():
    before = settings.current()
    measured = settings._measured_on
    yield
    settings.apply(before)
    settings._measured_on = measured
    settings._checked.clear()


def test_current_lists_each_ops_settings_with_their_values():
    now = settings.current()
    assert set(now) == {"tssa", "causal_tssa", "causal_linear_attention"}
    assert now["tssa"]["RESIDENT"] is tt.RESIDENT and now["tssa"]["PROGRAMS"] == tt.PROGRAMS
    assert now["tssa"]["RESIDENT_BWD"] is tt.RESIDENT_BWD          # None by default: typed by its annotation
    assert now["causal_tssa"]["FUSED"] is ct.FUSED and now["causal_linear_attention"]["CHUNK"] == la.CHUNK
    assert "KERNELS" not in now["tssa"] and "last_run" not in now["tssa"]   # not settings


def test_apply_sets_and_returns_what_it_replaced():
    old = tt.PROGRAMS
    previous = settings.apply({"tssa": {"PROGRAMS": old + 8, "RESIDENT_BWD": True},
                               "causal_linear_attention": {"CHUNK": 32}})
    assert (tt.PROGRAMS, tt.RESIDENT_BWD, la.CHUNK) == (old + 8, True, 32)
    assert previous == {"tssa": {"PROGRAMS": old, "RESIDENT_BWD": None}, "causal_linear_attention": {"CHUNK": None}}
    settings.apply(previous)
    assert (tt.PROGRAMS, tt.RESIDENT_BWD, la.CHUNK) == (old, None, None)


def test_using_restores_after_an_error():
    old = ct.UNROLL
    with pytest.raises(KeyError):
        with settings.using({"causal_tssa": {"UNROLL": old * 2}}):
            assert ct.UNROLL == old * 2
            raise KeyError("inside")
    assert ct.UNROLL == old


@pytest.mark.parametrize("table,message", [
    ({"tsa": {"PROGRAMS": 1}}, "unknown op 'tsa'"),
    ({"tssa": {"PROGRAM": 1}}, "tssa.PROGRAM is not a launch setting (did you mean PROGRAMS?)"),
    ({"tssa": {"CHUNK": 32}}, "tssa.CHUNK is not a launch setting (those of tssa: FLAT_MIDDLE, L2_GROUP,"),
    ({"tssa": {"PROGRAMS": True}}, "tssa.PROGRAMS takes int, got True (bool)"),
    ({"tssa": {"RESIDENT": 1}}, "tssa.RESIDENT takes bool, got 1 (int)"),
    ({"tssa": {"RESIDENT_BWD": "yes"}}, "tssa.RESIDENT_BWD takes bool or None, got 'yes' (str)"),
    ({"causal_linear_attention": {"CHUNK": 32.0}}, "CHUNK takes int or None, got 32.0 (float)"),
    ({"causal_tssa": {"UNROLL": -4}}, "causal_tssa.UNROLL is a count, got -4"),
    ({"causal_tssa": 4}, "causal_tssa: expected {SETTING: value}, got 4"),
    ({"causal_tssa": {"WARPS": 6}}, "causal_tssa.WARPS takes a power of two up to 32, got 6"),
    ({"causal_tssa": {"UNROLL": 3}}, "causal_tssa.UNROLL takes a power of two, got 3"),
    ({"causal_linear_attention": {"CHUNK": 8}}, "CHUNK takes a power of two of at least 16, got 8"),
    ({"tssa": {"PROGRAMS": 0}}, "tssa.PROGRAMS takes at least 1, got 0"),
], ids=["unknown-op", "misspelt-setting", "another-ops-setting", "bool-for-int", "int-for-bool",
        "str-for-optional-bool", "float-for-optional-int", "negative-count", "not-a-table", "warps-not-pow2",
        "unroll-not-pow2", "chunk-too-small", "no-programs"])
def test_a_wrong_setting_is_named_and_nothing_is_set(table, message):
    before = settings.current()
    with pytest.raises(ValueError, match="launch settings") as e:
        settings.apply({"causal_tssa": {"PROGRAMS": 7}, **table})   # a valid setting beside the wrong one
    assert message in str(e.value)
    assert settings.current() == before


def test_the_defaults_and_automatic_zeros_pass_the_checks():
    settings.check(settings.current())
    settings.check({"causal_tssa": {"TILED_WARPS": 0, "BWD_UNROLL": 0, "TILED_MAXNREG": 168},
                    "tssa": {"RESIDENT_TILE": 32768, "RESIDENT_WARPS": 8}})


def test_every_error_is_reported_at_once():
    with pytest.raises(ValueError) as e:
        settings.apply({"tssa": {"PROGRAM": 1, "RESIDENT": "no"}, "nope": {}})
    text = str(e.value)
    assert "3 errors, nothing set" in text and "PROGRAM is not" in text and "RESIDENT takes bool" in text
    assert "unknown op 'nope'" in text


def test_a_sweep_file_applies_its_best_settings(tmp_path):
    path = tmp_path / "sweep.json"
    path.write_text(json.dumps({"device": "NVIDIA H200", "rows": [],
                                "best": {"tssa": {"PARTS": False}, "linear_attn": {"SPLIT": 2}}}))   # earlier key
    settings.apply(path)
    assert tt.PARTS is False and la.SPLIT == 2
    assert settings._measured_on == ("NVIDIA H200", str(path))


@pytest.mark.parametrize("text,message", [("{", "not JSON"), ("[1, 2]", "expected a JSON object")],
                         ids=["broken-json", "json-list"])
def test_a_bad_file_is_named(tmp_path, text, message):
    path = tmp_path / "tuned.json"
    path.write_text(text)
    with pytest.raises(ValueError, match=message) as e:
        settings.apply(path)
    assert str(path) in str(e.value)
    with pytest.raises(FileNotFoundError, match="no such file"):
        settings.apply(tmp_path / "missing.json")


def test_settings_of_another_card_warn_once_per_gpu(tmp_path, monkeypatch):
    path = tmp_path / "sweep.json"
    path.write_text(json.dumps({"device": "NVIDIA H200", "best": {"tssa": {"PROGRAMS": 2048}}}))
    settings.apply(path)
    names = {0: "NVIDIA H100 80GB HBM3", 1: "NVIDIA H200"}
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda i: names[i])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(3):
            settings.check_device(torch.device("cuda", 0))
            settings.check_device(torch.device("cuda", 1))   # the card it was measured on: silent
    assert len(caught) == 1
    assert "measured on NVIDIA H200; cuda:0 is NVIDIA H100 80GB HBM3" in str(caught[0].message)


def _import_with_env(path):
    env = {**os.environ, "TRITON_INTERPRET": "1", settings.ENV: str(path)}
    code = "from tost_edge.ops.triton import tssa, settings; print(tssa.PROGRAMS, tssa.RESIDENT)"
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)


def test_the_environment_variable_applies_a_file_at_import(tmp_path):
    path = tmp_path / "sweep.json"
    path.write_text(json.dumps({"device": "NVIDIA H200", "best": {"tssa": {"PROGRAMS": 1536, "RESIDENT": True}}}))
    r = _import_with_env(path)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.split() == ["1536", "True"]
    path.write_text(json.dumps({"tssa": {"RESIDENT": "on"}}))
    r = _import_with_env(path)
    assert r.returncode != 0 and f"{settings.ENV}: {path}: tssa.RESIDENT takes bool" in r.stderr
