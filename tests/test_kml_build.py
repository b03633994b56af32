"""Building libkml.so: the user-space Makefile, exports, size, errors."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from kmlbench import kml, paths


@pytest.mark.skipif(shutil.which("cc") is None, reason="no C compiler")
def test_makefile_user_builds_small_library_with_hidden_internals(tmp_path):
    subprocess.run(
        ["make", "-s", "-C", str(paths.KML_SRC_DIR), "-f", "Makefile.user", f"OUT={tmp_path}"],
        check=True,
    )
    so = tmp_path / "libkml.so"
    assert so.stat().st_size <= 64 * 1024  # target
    syms = subprocess.run(
        ["nm", "-D", "--defined-only", str(so)], capture_output=True, text=True, check=True
    ).stdout
    names = {line.split()[-1] for line in syms.splitlines()}
    for api in ("kml_model_create", "kml_model_load", "kml_ring_push", "kml_expf"):
        assert api in names
    for internal in ("kml_f32_predict", "kml_q16_forward", "kml_cfg_check", "kml_zalloc"):
        assert internal not in names


def test_missing_compiler_is_named(monkeypatch):
    monkeypatch.delenv("KML_LIB", raising=False)
    monkeypatch.setattr(kml, "_lib_root", lambda: paths.cache_dir() / "libkml-test-nocc")
    with pytest.raises(kml.KmlBuildError, match="no-such-cc-kml"):
        kml.build_libkml(force=True, cc="no-such-cc-kml")
