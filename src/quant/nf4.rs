//! NF4 with double quantization, bit-compatible with bitsandbytes (helper fills this in).
