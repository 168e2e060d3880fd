//! NF4 against bitsandbytes 0.50.2 (CPU backend): `quantize_4bit(w, blocksize=64, quant_type="nf4",
//! compress_statistics=True)` then `dequantize_4bit`. Fixtures from scripts/make_nf4_fixtures.py.

use std::path::PathBuf;

use lora_train::quant::nf4::{Nf4Matrix, NF4_ABSMAX_BLOCK, NF4_BLOCK};
use serde_json::Value;
use sha2::{Digest, Sha256};

fn fixture(name: &str) -> Value {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/nf4")
        .join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

fn f32s_from_hex(s: &str) -> Vec<f32> {
    unhex(s)
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

fn usize_of(doc: &Value, key: &str) -> usize {
    doc[key].as_u64().unwrap_or_else(|| panic!("missing {key}")) as usize
}

/// `formula_input` in scripts/make_nf4_fixtures.py: exact in f32, so both sides agree bit for bit.
fn formula_input(rows: usize, cols: usize) -> Vec<f32> {
    let hash = |i: u64| {
        let mut x = (i as u32)
            .wrapping_mul(0x9E37_79B1)
            .wrapping_add(0x7F4A_7C15);
        x ^= x >> 16;
        x = x.wrapping_mul(0x85EB_CA6B);
        x ^ (x >> 13)
    };
    (0..(rows * cols) as u64)
        .map(|i| {
            let g: i64 = (0..4).map(|k| i64::from(hash(4 * i + k) >> 10)).sum();
            let mut x = (g - (1 << 23)) as f32 * 2f32.powi(-22);
            x *= 2f32.powi((i / 64 % 7) as i32 - 3);
            if i % 997 == 0 {
                x *= 16.0;
            }
            x
        })
        .collect()
}

fn load_case(name: &str) -> (Value, Vec<f32>, Nf4Matrix) {
    let doc = fixture(&format!("{name}.json"));
    let (rows, cols) = (usize_of(&doc, "rows"), usize_of(&doc, "cols"));
    let input = match doc["input_f32_hex"].as_str() {
        Some(hex) => f32s_from_hex(hex),
        None => formula_input(rows, cols),
    };
    let q = Nf4Matrix::quantize(&input, rows, cols).unwrap();
    assert_eq!((q.rows(), q.cols()), (rows, cols));
    (doc, input, q)
}

fn assert_state_matches(name: &str, doc: &Value, q: &Nf4Matrix) {
    let offset = doc["offset_bits"].as_u64().unwrap() as u32;
    assert_eq!(
        q.absmax_offset().to_bits(),
        offset,
        "{name}: absmax mean {} != bnb's {}",
        q.absmax_offset(),
        f32::from_bits(offset)
    );
    let scales: Vec<u32> = q.absmax_scales().iter().map(|s| s.to_bits()).collect();
    let want: Vec<u32> = doc["absmax_scales_bits"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as u32)
        .collect();
    assert_eq!(scales, want, "{name}: second-level scales");
    let codes = unhex(doc["absmax_codes_hex"].as_str().unwrap());
    assert_eq!(q.absmax_codes().len(), codes.len(), "{name}: absmax count");
    if let Some(i) = q
        .absmax_codes()
        .iter()
        .zip(&codes)
        .position(|(a, b)| a != b)
    {
        panic!(
            "{name}: absmax code {i} is {} but bnb's is {}",
            q.absmax_codes()[i],
            codes[i]
        );
    }
}

fn assert_close(name: &str, ours: &[f32], bnb: &[f32], stride: usize) {
    for (k, (a, b)) in ours.iter().step_by(stride).zip(bnb).enumerate() {
        assert!(
            (a - b).abs() <= 1e-6 * b.abs(),
            "{name}: element {} dequantizes to {a}, bnb gives {b}",
            k * stride
        );
    }
}

#[test]
fn matches_bitsandbytes_bit_for_bit() {
    for name in ["gauss_8x128", "mixed_3x320", "formula_40x512"] {
        let (doc, _, q) = load_case(name);
        let packed = unhex(doc["packed_hex"].as_str().unwrap());
        assert_eq!(
            q.packed_codes().len(),
            packed.len(),
            "{name}: packed length"
        );
        if let Some(i) = q
            .packed_codes()
            .iter()
            .zip(&packed)
            .position(|(a, b)| a != b)
        {
            panic!(
                "{name}: packed byte {i} is {:#04x}, bnb's is {:#04x}",
                q.packed_codes()[i],
                packed[i]
            );
        }
        assert_state_matches(name, &doc, &q);

        let stride = usize_of(&doc, "dequant_stride");
        let bnb = f32s_from_hex(doc["dequant_f32_hex"].as_str().unwrap());
        let ours = q.dequantize();
        assert_eq!(
            ours.len().div_ceil(stride),
            bnb.len(),
            "{name}: dequantized length"
        );
        assert_close(name, &ours, &bnb, stride);
    }
}

#[test]
fn large_matrix_matches_bitsandbytes_digests() {
    let name = "formula_131x4032";
    let (doc, _, q) = load_case(name);
    assert!(q.absmax_codes().len() > 8 * NF4_ABSMAX_BLOCK);
    assert_state_matches(name, &doc, &q);
    let packed = format!("{:x}", Sha256::digest(q.packed_codes()));
    assert_eq!(
        packed,
        doc["packed_sha256"].as_str().unwrap(),
        "{name}: packed codes"
    );
    let bytes: Vec<u8> = q
        .dequantize()
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    let dequant = format!("{:x}", Sha256::digest(&bytes));
    assert_eq!(
        dequant,
        doc["dequant_f32_sha256"].as_str().unwrap(),
        "{name}: dequantized values"
    );
}

#[test]
fn row_ranges_equal_slices_of_the_whole() {
    let (_, _, q) = load_case("formula_40x512");
    let cols = q.cols();
    let whole = q.dequantize();
    for (r0, r1) in [(0, 40), (0, 1), (13, 14), (7, 31), (39, 40), (20, 20)] {
        let mut out = vec![f32::NAN; (r1 - r0) * cols];
        q.dequantize_rows_into(r0, r1, &mut out).unwrap();
        assert!(
            out.iter()
                .zip(&whole[r0 * cols..r1 * cols])
                .all(|(a, b)| a.to_bits() == b.to_bits()),
            "rows {r0}..{r1}"
        );
    }
}

#[test]
fn bad_shapes_and_ranges_are_errors() {
    let msg = Nf4Matrix::quantize(&[0.5; 2 * 96], 2, 96)
        .unwrap_err()
        .to_string();
    assert!(msg.contains("96") && msg.contains("multiple"), "{msg}");
    assert!(Nf4Matrix::quantize(&[0.5; 3 * NF4_BLOCK], 2, NF4_BLOCK).is_err());
    assert!(Nf4Matrix::quantize(&[0.5; NF4_BLOCK], usize::MAX, NF4_BLOCK).is_err());

    let q = Nf4Matrix::quantize(&[0.5; 4 * NF4_BLOCK], 4, NF4_BLOCK).unwrap();
    let mut out = vec![0.0; NF4_BLOCK];
    assert!(q.dequantize_rows_into(4, 5, &mut out).is_err());
    assert!(q.dequantize_rows_into(3, 2, &mut out).is_err());
    assert!(
        q.dequantize_rows_into(0, 2, &mut out).is_err(),
        "output too short"
    );
    q.dequantize_rows_into(3, 4, &mut out).unwrap();
}

#[test]
fn size_counts_codes_absmax_codes_scales_and_offset() {
    let (_, input, q) = load_case("formula_40x512");
    // 20480 weights: 10240 code bytes, 320 absmax codes, 2 scales, 1 offset.
    assert_eq!(q.size_in_bytes(), 10240 + 320 + 2 * 4 + 4);
    assert!(q.size_in_bytes() * 7 < std::mem::size_of_val(&input[..]));
}
