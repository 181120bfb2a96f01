//! AFL++ entry point of [`arrow_quant_v2_fuzz::targets::quantized_reader`] (what it checks is there).

fn main() {
    afl::fuzz_nohook!(|data: &[u8]| arrow_quant_v2_fuzz::targets::quantized_reader::check(data));
}
