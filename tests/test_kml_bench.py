"""bench_lib: the JSON contract and the kernel footprint measurement."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest

from kmlbench import cli
from kmlbench.bench import lib as bench_lib


def test_json_contract(capsys):
    assert cli.main(["bench", "lib", "--json", "--quick"]) == 0
    res = json.loads(capsys.readouterr().out)
    for key in ("inference_ns", "train_samples_per_s"):
        assert set(res[key]) == {"linear", "mlp"}
        for model in ("linear", "mlp"):
            assert set(res[key][model]) == set(bench_lib.IMPLS)
            for impl in ("kml-float", "kml-fixed", "numpy"):
                assert all(v > 0 for v in res[key][model][impl].values())
    assert set(res["inference_ns"]["mlp"]["kml-float"]) == {"sample", "batch64", "sample_python"}
    fp = res["footprint_bytes"]
    assert set(fp) == {"libkml_so", "kernel_kml", "model_linear", "model_mlp"}
    assert all(v is None or isinstance(v, int) for v in fp.values())
    assert 0 < fp["libkml_so"] <= 64 * 1024
    assert 0 < fp["model_linear"] < fp["model_mlp"] <= 4096


@pytest.mark.skipif(shutil.which("cc") is None or shutil.which("ar") is None, reason="no cc/ar")
def test_kernel_footprint_from_a_build_dir(tmp_path):
    src = tmp_path / "x.c"
    src.write_text("int kml_x[100] = {1};\nint kml_f(int a) { return a * 3 + kml_x[a]; }\n")
    kml_dir = tmp_path / "build" / "lib" / "kml"
    kml_dir.mkdir(parents=True)
    subprocess.run(["cc", "-c", "-O2", str(src), "-o", str(tmp_path / "x.o")], check=True)
    subprocess.run(["ar", "rcs", str(kml_dir / "built-in.a"), str(tmp_path / "x.o")], check=True)
    found = bench_lib.find_kernel_kml(tmp_path / "build")
    assert found == kml_dir / "built-in.a"
    size = bench_lib._size_text_data(found)
    assert size is not None and size >= 400  # 100 ints of data plus some text
