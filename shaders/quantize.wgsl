// Quantize: pass `group_params` (one invocation per group) then `pack` (one per output word).
// Appended to common.wgsl.

@group(0) @binding(0) var<uniform> u: Uniforms;
@group(0) @binding(1) var<storage, read> segs: array<Seg>;
@group(0) @binding(2) var<storage, read> input: array<u32>;
@group(0) @binding(3) var<storage, read_write> params: array<Params>;
@group(0) @binding(4) var<storage, read_write> out_words: array<u32>;
@group(0) @binding(5) var<storage, read_write> scales: array<u32>;
@group(0) @binding(6) var<storage, read_write> zero_points: array<u32>;
@group(0) @binding(7) var<storage, read_write> errs: array<atomic<u32>>;

// Pass 1: min/max in the total order on integer keys, NaN/Inf on the bits, then the
// parameters in integer arithmetic.
@compute @workgroup_size(256)
fn group_pass(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let gi = flat_index(gid, nwg);
    if gi >= u.n_units {
        return;
    }
    let si = find_seg_by_group(gi);
    let s = segs[si];
    let c = s.col0 + (gi - s.group_start);
    let row_off = c / s.gpr;
    let col = c % s.gpr;
    let start = s.elem_start + row_off * s.row_len + col * s.group_size - s.col0 * s.group_size;
    let len = min(s.group_size, s.row_len - col * s.group_size);
    var mn = 0x7fffffff;
    var mx = -0x7fffffff - 1;
    var mn_bits = 0u;
    var mx_bits = 0u;
    var bad = false;
    for (var i = 0u; i < len; i = i + 1u) {
        let b = input[start + i];
        bad = bad || ((b & INF_BITS) == INF_BITS);
        let k = order_key(b);
        if k < mn { mn = k; mn_bits = b; }
        if k > mx { mx = k; mx_bits = b; }
    }
    var p: Params;
    if bad {
        p = Params(mn_bits, 0u, 0u, 0u, FLAG_NON_FINITE);
    } else {
        p = group_params(mn_bits, mx_bits, (1u << s.bits) - 1u);
    }
    if (p.flags & (FLAG_NON_FINITE | FLAG_OVERFLOW)) != 0u {
        atomicOr(&errs[si], 1u);
    }
    params[gi] = p;
    scales[gi] = p.scale;
    zero_points[gi] = p.lo;
}

// Pass 2: one output word. Groups start on byte boundaries, so each byte belongs to exactly
// one group; pieces start on word boundaries, so each word to exactly one piece.
@compute @workgroup_size(256)
fn pack_pass(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let wi = flat_index(gid, nwg);
    if wi >= u.n_units {
        return;
    }
    let s = segs[find_seg_by_word(wi)];
    let max_code = (1u << s.bits) - 1u;
    let cpb = 8u / s.bits;
    var word = 0u;
    for (var j = 0u; j < 4u; j = j + 1u) {
        let lb = (wi - s.word_start) * 4u + j;
        if lb >= s.n_bytes {
            break;
        }
        let bb = s.col0 * s.group_bytes + lb;
        let row_off = bb / s.row_bytes;
        let rb = bb % s.row_bytes;
        let col = rb / s.group_bytes;
        let bg = rb % s.group_bytes;
        let lg = row_off * s.gpr + col - s.col0;
        let gstart = s.elem_start + row_off * s.row_len + col * s.group_size - s.col0 * s.group_size;
        let glen = min(s.group_size, s.row_len - col * s.group_size);
        let p = params[s.group_start + lg];
        var byte = 0u;
        for (var k = 0u; k < cpb; k = k + 1u) {
            let e = bg * cpb + k;
            if e < glen {
                byte = byte | (code(input[gstart + e], p, max_code) << (k * s.bits));
            }
        }
        word = word | (byte << (8u * j));
    }
    out_words[wi] = word;
}
