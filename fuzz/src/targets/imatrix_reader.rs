//! Fuzz target: the importance-matrix reader (GGUF and legacy formats), on any bytes. It must
//! return a result, never panic, hang or allocate beyond the input's size, and what it accepts is
//! finite.

use arrow_quant_v2::gguf::Imatrix;

/// One input; panics (assertion failures included) are the findings.
pub fn check(data: &[u8]) {
    let Ok(m) = Imatrix::from_bytes(data) else { return };
    for (name, values) in &m.entries {
        assert!(values.iter().all(|v| v.is_finite()), "non-finite value accepted");
        assert_eq!(m.get(name), Some(&values[..]));
    }
}
