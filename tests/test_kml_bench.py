"""bench_lib: the JSON contract and the kernel footprint measurement."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest

from kmlbench import cli
from kmlbench.bench import footprint as kfp
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
    by_object = fp.pop("kernel_kml_by_object")
    assert set(fp) == {
        "libkml_so", "kernel_kml", "kernel_kml_init", "kernel_kml_per_cpu",
        "kernel_kml_text_data", "model_linear", "model_mlp",
    }  # fmt: skip
    assert all(v is None or isinstance(v, int) for v in fp.values())
    if fp["kernel_kml"] is None:
        assert by_object is None
    else:
        assert sum(by_object.values()) == fp["kernel_kml"], by_object
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
    found = kfp.find_kernel_kml(tmp_path / "build")
    assert found == kml_dir / "built-in.a"
    size = kfp.kernel_sections(found)
    assert size is not None and size["resident"] >= 400  # 100 ints of data plus some text
    assert size["init"] == size["discarded"] == 0


@pytest.mark.skipif(shutil.which("cc") is None or shutil.which("ar") is None, reason="no cc/ar")
def test_kernel_footprint_leaves_out_what_the_kernel_does_not_keep(tmp_path):
    """.modinfo and .discard.* never reach memory, .init.* is freed after
    boot: an object with them keeps as much resident as one without."""
    base = "int kml_x[100] = {1};\nint kml_f(int a) { return a * 3 + kml_x[a]; }\n"
    extra = (
        'static const char kml_info[600] __attribute__((section(".modinfo"), used)) = "l=GPL";\n'
        'static const char kml_d[40] __attribute__((section(".discard.addressable"), used));\n'
        '__attribute__((section(".init.text"), used)) int kml_init(int a) { return a + 1; }\n'
        'long kml_pcpu[96] __attribute__((section(".data..percpu"), used)) = {1};\n'
    )
    sizes = {}
    for name, text in (("plain", base), ("extra", base + extra)):
        src = tmp_path / f"{name}.c"
        src.write_text(text)
        obj = tmp_path / f"{name}.o"
        # no unwind tables, as in the kernel: an .eh_frame entry per function
        cflags = ["-O2", "-fno-asynchronous-unwind-tables", "-fno-unwind-tables"]
        subprocess.run(["cc", "-c", *cflags, str(src), "-o", str(obj)], check=True)
        ar = tmp_path / name / "built-in.a"
        ar.parent.mkdir()
        subprocess.run(["ar", "rcs", str(ar), str(obj)], check=True)
        sizes[name] = kfp.kernel_sections(ar)
    plain, extra_sizes = sizes["plain"], sizes["extra"]
    assert plain is not None and extra_sizes is not None
    assert extra_sizes["resident"] == plain["resident"], sizes
    assert extra_sizes["discarded"] == 640, sizes
    assert extra_sizes["init"] > 0, sizes
    # per-CPU data is a template copied for each CPU, counted apart
    assert extra_sizes["per_cpu"] == 768 and plain["per_cpu"] == 0, sizes
    # and size(1) counts all of it, as text and data
    for name in ("plain", "extra"):
        ar = tmp_path / name / "built-in.a"
        out = subprocess.run(["size", "-t", str(ar)], capture_output=True, text=True, check=True)
        text, data = (int(v) for v in out.stdout.splitlines()[-1].split()[:2])
        sections = kfp.allocated_sections(ar)
        assert sections is not None and kfp.text_and_data(sections) == text + data, out.stdout


@pytest.mark.skipif(shutil.which("cc") is None or shutil.which("ar") is None, reason="no cc/ar")
def test_kernel_footprint_by_object(tmp_path):
    """The resident bytes of each member of an archive, largest first, sum
    to the archive's; a .ko is one object."""
    cflags = ["-O2", "-fno-asynchronous-unwind-tables", "-fno-unwind-tables"]
    objs = []
    for name, n in (("small", 10), ("big", 1000)):
        src = tmp_path / f"kml_{name}.c"
        src.write_text(f"int kml_{name}[{n}] = {{1}};\n")
        obj = tmp_path / f"kml_{name}.o"
        subprocess.run(["cc", "-c", *cflags, str(src), "-o", str(obj)], check=True)
        objs.append(obj)
    by_kind = {}
    # a thin archive, as the kernel's built-in.a, and a regular one
    for kind, flags in (("thin", "rcsT"), ("regular", "rcs")):
        ar = tmp_path / kind / "built-in.a"
        ar.parent.mkdir()
        subprocess.run(["ar", flags, str(ar), *map(str, objs)], check=True)
        sections = kfp.allocated_sections(ar)
        assert sections is not None
        by_object = kfp.resident_by_object(sections)
        assert list(by_object) == ["kml_big.o", "kml_small.o"], (kind, by_object)
        total = kfp.kernel_sections(ar)
        assert total is not None and sum(by_object.values()) == total["resident"]
        by_kind[kind] = by_object
    assert by_kind["thin"] == by_kind["regular"]
    assert by_object["kml_big.o"] >= 4000 and 40 <= by_object["kml_small.o"] < 400, by_object
    ko = tmp_path / "kml.ko"
    shutil.copy(objs[1], ko)
    ko_sections = kfp.allocated_sections(ko)
    assert ko_sections is not None
    assert kfp.resident_by_object(ko_sections) == {"kml.ko": by_object["kml_big.o"]}
    assert kfp.allocated_sections(tmp_path / "missing.a") is None


@pytest.mark.skipif(shutil.which("cc") is None or shutil.which("ar") is None, reason="no cc/ar")
def test_exit_sections_are_freed_built_in_and_kept_in_a_module(tmp_path):
    """x86's vmlinux frees .exit.* with init (RUNTIME_DISCARD_EXIT); a
    module that can be unloaded keeps them."""
    src = tmp_path / "x.c"
    src.write_text(
        "int kml_x[10] = {1};\n"
        '__attribute__((section(".exit.text"), used)) int kml_exit(int a) { return a - 1; }\n'
    )
    obj = tmp_path / "x.o"
    cflags = ["-O2", "-fno-asynchronous-unwind-tables", "-fno-unwind-tables"]
    subprocess.run(["cc", "-c", *cflags, str(src), "-o", str(obj)], check=True)
    ar = tmp_path / "built-in.a"
    subprocess.run(["ar", "rcs", str(ar), str(obj)], check=True)
    ko = tmp_path / "kml.ko"
    shutil.copy(obj, ko)
    built_in, module = kfp.kernel_sections(ar), kfp.kernel_sections(ko)
    assert built_in is not None and module is not None
    assert built_in["init"] > 0 and module["init"] == 0, (built_in, module)
    assert module["resident"] == built_in["resident"] + built_in["init"], (built_in, module)
