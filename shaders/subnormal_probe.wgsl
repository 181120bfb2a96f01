// Does this adapter keep subnormal f32 operands and results in + - * ? (`gpu::lsq`.) The
// operands come from a buffer, so the compiler cannot fold the operations.
@group(0) @binding(0) var<storage, read_write> io: array<u32, 16>;

fn f(b: u32) -> f32 {
    return bitcast<f32>(b);
}

@compute @workgroup_size(1)
fn probe() {
    io[8] = bitcast<u32>(f(io[0]) * f(io[1]));  // subnormal operand:    2^-140 × 1
    io[9] = bitcast<u32>(f(io[2]) - f(io[3]));  // subnormal result:     2^-126 − 2^-127
    io[10] = bitcast<u32>(f(io[4]) + f(io[5])); // subnormal + 0:        1e-40 + 0
    io[11] = bitcast<u32>(f(io[6]) * f(io[7])); // normals, subnormal product: 2^-70 × 2^-70
}
