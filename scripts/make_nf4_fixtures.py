#!/usr/bin/env python3
"""bitsandbytes reference for lora-train's NF4 tests (src/quant/nf4.rs, tests/nf4.rs).

Runs bnb.functional.quantize_4bit(w, blocksize=64, quant_type="nf4", compress_statistics=True) and
dequantize_4bit on bitsandbytes' CPU backend and writes tests/fixtures/nf4/:

  tables.json       the NF4 code table and create_dynamic_map(signed=True), as f32 bit patterns
  <case>.json       rows, cols, the input (f32 little-endian hex, or "input_formula" for the large cases),
                    bnb's packed 4-bit codes (hex), absmax codes (hex), second-level f32 scales,
                    the absmax mean offset, and bnb's dequantized output (whole, or every k-th value);
                    the largest case keeps only sha256 digests of the codes and of the output

    /work/pyenv/bin/python -m pip install bitsandbytes==0.50.2
    /work/pyenv/bin/python scripts/make_nf4_fixtures.py

Byte-identical output on every run. The "formula_*" cases take their input from an integer hash that
tests/nf4.rs reproduces exactly, so the fixtures stay small: formula_40x512 has 320 absmaxes (two
second-level blocks, the second partial), formula_131x4032 has 8253.

The absmax mean is torch's f32 `mean()`, whose summation order depends on the CPU's vector width:
src/quant/nf4.rs follows AVX2 (8 lanes). Regenerate on an AVX2 machine (`torch.backends.cpu.
get_cpu_capability()` == "AVX2"); on AVX-512 the offsets may move by an ulp.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import bitsandbytes
import bitsandbytes.functional as F
import numpy as np
import torch

OUT = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "nf4"


def f32_hex(a) -> str:
    return np.ascontiguousarray(np.asarray(a, dtype="<f4")).tobytes().hex()


def f32_bits(a) -> list[int]:
    return [int(x) for x in np.asarray(a, dtype="<f4").view("<u4")]


def hash_u32(i: np.ndarray) -> np.ndarray:
    x = i.astype(np.uint32) * np.uint32(0x9E3779B1) + np.uint32(0x7F4A7C15)
    x ^= x >> np.uint32(16)
    x *= np.uint32(0x85EBCA6B)
    x ^= x >> np.uint32(13)
    return x


def formula_input(rows: int, cols: int) -> np.ndarray:
    """Exact in f32: a sum of four 22-bit integers, centred, times a power of two per 64-block."""
    n = rows * cols
    i = np.arange(n, dtype=np.uint64)
    g = np.zeros(n, dtype=np.int64)
    for k in range(4):
        g += (hash_u32((4 * i + k) & 0xFFFFFFFF) >> np.uint32(10)).astype(np.int64)
    x = (g - (1 << 23)).astype(np.float32) * np.float32(2.0**-22)
    block = (i // 64).astype(np.int64)
    x *= np.exp2((block % 7) - 3).astype(np.float32)
    x[(i % 997) == 0] *= np.float32(16.0)
    return x.reshape(rows, cols)


def quantize(w: np.ndarray):
    t = torch.from_numpy(np.ascontiguousarray(w, dtype=np.float32))
    q, st = F.quantize_4bit(t, blocksize=64, quant_type="nf4", compress_statistics=True)
    deq = F.dequantize_4bit(q, st).numpy()
    assert st.nested and st.state2.blocksize == 256 and q.dtype == torch.uint8
    return q.numpy().reshape(-1), st, deq


def case(name: str, w: np.ndarray, formula: bool = False, stride: int = 1, digest: bool = False) -> None:
    rows, cols = w.shape
    q, st, deq = quantize(w)
    doc = {
        "rows": rows,
        "cols": cols,
        "absmax_codes_hex": st.absmax.numpy().astype(np.uint8).tobytes().hex(),
        "absmax_scales_bits": f32_bits(st.state2.absmax.numpy()),
        "offset_bits": f32_bits([st.offset.item()])[0],
    }
    if digest:
        doc["packed_sha256"] = hashlib.sha256(q.tobytes()).hexdigest()
        doc["dequant_f32_sha256"] = hashlib.sha256(deq.astype("<f4").tobytes()).hexdigest()
    else:
        doc["packed_hex"] = q.tobytes().hex()
        doc["dequant_stride"] = stride
        doc["dequant_f32_hex"] = f32_hex(deq.reshape(-1)[::stride])
    if formula:
        doc["input_formula"] = "hash_u32 sum-of-four, see scripts/make_nf4_fixtures.py:formula_input"
    else:
        doc["input_f32_hex"] = f32_hex(w.reshape(-1))
    (OUT / f"{name}.json").write_text(json.dumps(doc, indent=1) + "\n")


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    capability = torch.backends.cpu.get_cpu_capability()
    if capability != "AVX2":
        raise SystemExit(f"torch CPU capability is {capability}; the fixtures need AVX2 (see the docstring)")
    tables = {
        "bitsandbytes": bitsandbytes.__version__,
        "torch": torch.__version__,
        "nf4_bits": f32_bits(F.get_4bit_type("nf4", device="cpu").numpy()),
        "dynamic_signed_bits": f32_bits(F.create_dynamic_map(signed=True).numpy()),
    }
    (OUT / "tables.json").write_text(json.dumps(tables) + "\n")

    rng = np.random.default_rng(20240611)
    w = rng.standard_normal((8, 128)).astype(np.float32)
    w[5] = 0.0
    w[1, 7] = 9.5
    w[6, 100] = -12.25
    w[3, 64] = 4.0
    case("gauss_8x128", w)

    w = rng.standard_normal((3, 320)).astype(np.float32)
    w[0] *= np.float32(1e-3)
    w[2] *= np.float32(50.0)
    w[1, 200] = -300.0
    case("mixed_3x320", w)

    case("formula_40x512", formula_input(40, 512), formula=True, stride=7)
    # 8253 absmaxes: torch's cascade sum uses its level accumulators and all its tails.
    case("formula_131x4032", formula_input(131, 4032), formula=True, digest=True)


if __name__ == "__main__":
    main()
