"""``offroadseg.machine`` and ``doctor --machine``: CPU facts from /proc/cpuinfo, measured GEMM peaks."""

from __future__ import annotations

import json

from offroadseg.cli import main
from offroadseg.machine import cpu_info, native_bf16

AVX2_ONLY = "processor : 0\nmodel name : AMD EPYC 7B12\nflags : fpu sse2 avx avx2 fma bmi2\n"
SAPPHIRE = (
    "processor : 0\nmodel name : Intel(R) Xeon(R) Platinum 8480\n"
    "flags : avx2 fma avx512f avx512_vnni avx512_bf16 amx_bf16 amx_int8 amx_tile avx_vnni\n"
    "processor : 1\nmodel name : Intel(R) Xeon(R) Platinum 8480\nflags : avx2\n"
)
GRAVITON = "processor : 0\nBogoMIPS : 243\nFeatures : fp asimd sve sve2 bf16 i8mm\nCPU part : 0xd4f\n"


def test_cpu_flags_known_answers() -> None:
    avx2 = cpu_info(AVX2_ONLY)
    assert avx2["model"] == "AMD EPYC 7B12" and avx2["flags"] == ["avx2", "fma"]
    assert not avx2["native_bf16"] and not avx2["int8_dot"]
    spr = cpu_info(SAPPHIRE)  # the first processor's flags
    assert (
        spr["native_bf16"]
        and spr["int8_dot"]
        and "amx_bf16" in spr["flags"]
        and "avx512_vnni" in spr["flags"]
    )
    arm = cpu_info(GRAVITON)
    assert arm["flags"] == ["asimd", "sve", "sve2", "bf16", "i8mm"] and arm["native_bf16"] and arm["int8_dot"]
    assert native_bf16({"avx512_bf16"}) and not native_bf16({"avx512f", "avx2"})


def test_doctor_machine_prints_and_writes_json(tmp_path, capsys) -> None:
    out = tmp_path / "machine.json"
    assert main(["doctor", "--machine", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("machine: ") and "flags that matter" in printed and "measured GEMM" in printed
    rep = json.loads(out.read_text())
    assert rep["gemm"]["fp32_gflops"] > 0 and rep["gemm"]["bf16_gflops"] > 0
    assert rep["cpu"]["logical_cores"] >= 1 and isinstance(rep["gpus"], list)


def test_cpu_pass_precision_known_answers() -> None:
    from offroadseg.machine import cpu_pass_precision

    avx2, spr = cpu_info(AVX2_ONLY)["flags"], cpu_info(SAPPHIRE)["flags"]
    assert cpu_pass_precision("auto", avx2) == "fp32"  # emulated bf16 is slower than fp32
    assert cpu_pass_precision("auto", spr) == cpu_pass_precision("amp", spr) == "bf16"
    assert cpu_pass_precision("32", spr) == "fp32"  # the config asked for fp32
    assert cpu_pass_precision("bf16", avx2) == "bf16"  # asked for: honoured, even emulated
