//! AFL++ entry point of [`arrow_quant_v2_fuzz::targets::safetensors_reader`] (what it checks is there).

fn main() {
    afl::fuzz_nohook!(|data: &[u8]| arrow_quant_v2_fuzz::targets::safetensors_reader::check(data));
}
