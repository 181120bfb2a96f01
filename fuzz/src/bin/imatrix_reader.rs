//! AFL++ entry point of [`arrow_quant_v2_fuzz::targets::imatrix_reader`] (what it checks is there).

fn main() {
    afl::fuzz_nohook!(|data: &[u8]| arrow_quant_v2_fuzz::targets::imatrix_reader::check(data));
}
