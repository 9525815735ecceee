"""Backend choice (DESIGN.md §7) and the env report."""

import subprocess
import sys

import pytest
import torch

import vdm_fast
from vdm_fast import backends


@pytest.fixture(autouse=True)
def _fresh_resolution():
    backends.clear_cache()
    yield
    backends.clear_cache()


def test_env_var_overrides_default(monkeypatch):
    monkeypatch.setenv("VDM_FAST_BACKEND", "reference")
    assert backends.resolve(None, torch.device("cpu"), "q_sample") == "reference"


def test_env_var_unknown_name_is_refused(monkeypatch):
    monkeypatch.setenv("VDM_FAST_BACKEND", "fortran")
    with pytest.raises(ValueError, match="VDM_FAST_BACKEND"):
        backends.resolve(None, torch.device("cpu"), "q_sample")


def test_explicit_argument_beats_env_var(monkeypatch):
    monkeypatch.setenv("VDM_FAST_BACKEND", "cuda")
    assert backends.resolve("reference", torch.device("cpu"), "q_sample") == "reference"


def test_automatic_choice_falls_back_with_one_warning(monkeypatch):
    monkeypatch.setattr(backends._library, "has_native_kernel", lambda op, key: False)
    backends._warned.discard(("q_sample", "cpu"))
    with pytest.warns(RuntimeWarning, match="reference"):
        assert backends.resolve(None, torch.device("cpu"), "q_sample") == "reference"
    backends.clear_cache()
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert backends.resolve(None, torch.device("cpu"), "q_sample") == "reference"


def test_explicit_unavailable_backend_raises(monkeypatch):
    monkeypatch.setattr(backends._library, "has_native_kernel", lambda op, key: False)
    with pytest.raises(RuntimeError, match="backend='cpu'"):
        backends.resolve("cpu", torch.device("cpu"), "q_sample")


def test_default_on_cpu_is_the_native_kernel_when_built():
    if not vdm_fast._library.has_native_kernel("q_sample", "CPU"):
        pytest.skip("native CPU kernel not built")
    assert backends.resolve(None, torch.device("cpu"), "q_sample") == "cpu"


def test_env_report_runs_as_module_and_command():
    out = subprocess.run([sys.executable, "-m", "vdm_fast.env"], capture_output=True, text=True, check=True).stdout
    assert "q_sample" in out and "torch" in out and "native library" in out
    from vdm_fast import cli

    assert cli.main(["env"]) == 0
