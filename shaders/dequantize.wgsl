// Dequantize: one invocation per output element. Appended to common.wgsl.

@group(0) @binding(0) var<uniform> u: Uniforms;
@group(0) @binding(1) var<storage, read> segs: array<Seg>;
@group(0) @binding(2) var<storage, read> packed: array<u32>;
@group(0) @binding(3) var<storage, read> scales: array<u32>;
@group(0) @binding(4) var<storage, read> zero_points: array<u32>;
@group(0) @binding(5) var<storage, read_write> out: array<u32>;

@compute @workgroup_size(256)
fn dequant_pass(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let ei = flat_index(gid, nwg);
    if ei >= u.n_units {
        return;
    }
    let s = segs[find_seg_by_elem(ei)];
    let c = s.col0 * s.group_size + (ei - s.elem_start);
    let row_off = c / s.row_len;
    let rc = c % s.row_len;
    let col = rc / s.group_size;
    let i = rc % s.group_size;
    let lg = row_off * s.gpr + col - s.col0;
    let byte = row_off * s.row_bytes + col * s.group_bytes + (i * s.bits) / 8u - s.col0 * s.group_bytes;
    let word = packed[s.word_start + byte / 4u];
    let q = (word >> ((byte % 4u) * 8u + (i * s.bits) % 8u)) & ((1u << s.bits) - 1u);
    let g = s.group_start + lg;
    out[ei] = dequant(q, scales[g], zero_points[g]);
}

// Index of the last segment whose `elem_start` ≤ x (segments are sorted by it).
fn find_seg_by_elem(x: u32) -> u32 {
    var lo = 0u;
    var hi = u.n_segs;
    while hi - lo > 1u {
        let mid = (lo + hi) / 2u;
        if segs[mid].elem_start <= x { lo = mid; } else { hi = mid; }
    }
    return lo;
}
