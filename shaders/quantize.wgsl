// Quantize: one fused pass, one workgroup per tile (planned by `plan::tiles`). Appended to
// common.wgsl and lsq.wgsl. The pipeline built with LSQ = true runs method="lsq" (after stage
// B, 16 invocations per group refine its grid: `lsq_tile`), on tiles of groups no longer than
// TILE_ELEMS.
//
// A tile is a run of whole groups of one piece, at most TILE_ELEMS elements and TILE_GROUPS
// groups. Stage A copies it into workgroup memory with coalesced 16-byte loads, so the input is
// read from device memory once. Stage B: 16 invocations per group scan it there, and one of
// them runs `group_params`. Stage C: one invocation per output word packs the codes from workgroup
// memory and writes the word (adjacent invocations, adjacent words).
//
// A group longer than TILE_ELEMS has a tile of its own, and the whole workgroup works on it:
// a strided min/max and a tree reduction in workgroup memory, then stages A and C slice by
// slice (the group is read twice). No invocation loops over a whole big group alone, which
// would also run past a driver watchdog, or past llvmpipe's loop limit (see QWG).
//
// Output words: a tile's packed bytes start and end on byte boundaries, so the word at a tile
// boundary inside a piece can hold bytes of two tiles (two workgroups). Both OR their bytes
// into it (the host clears the buffer first whenever a chunk has such a word); every other
// word has one writer and is stored whole.

const TILE_ELEMS: u32 = 2048u;
const TILE_GROUPS: u32 = 128u;
// Invocations per workgroup: a power of two, 5·QWG ≤ TILE_ELEMS (the reduction's rows of
// `data`). Fewer invocations mean more loop iterations per invocation for a big group, and
// llvmpipe (lavapipe) silently ends every loop of an invocation after 65,535 iterations in
// all: at 256 a chunk-sized group takes about 23,000.
const QWG: u32 = 256u;

// Mirror of `plan::Tile`.
struct Tile {
    seg: u32,      // piece (index into `segs` and `errs`)
    group0: u32,   // first group, as a chunk group index (scales, zero points)
    lg0: u32,      // first group, as an index within the piece
    n_groups: u32,
    elem0: u32,    // first element in the chunk's input
    n_elems: u32,
    byte0: u32,    // first packed byte in the chunk's output
    n_bytes: u32,
}

@group(0) @binding(0) var<uniform> u: Uniforms;
@group(0) @binding(1) var<storage, read> segs: array<Seg>;
@group(0) @binding(2) var<storage, read> input: array<vec4<u32>>;
@group(0) @binding(3) var<storage, read> tiles: array<Tile>;
@group(0) @binding(4) var<storage, read_write> out_words: array<atomic<u32>>;
@group(0) @binding(5) var<storage, read_write> scales: array<u32>;
@group(0) @binding(6) var<storage, read_write> zero_points: array<u32>;
@group(0) @binding(7) var<storage, read_write> errs: array<atomic<u32>>;

// 8 KiB + 2.5 KiB + 1 KiB, and lsq.wgsl's 4 KiB of partial sums: under the 16 KiB every
// WebGPU device has.
var<workgroup> data: array<u32, TILE_ELEMS>;
var<workgroup> gparams: array<Params, TILE_GROUPS>;
// Group i of the tile is data[gelem[i] .. gelem[i + 1]] and packs into the tile's bytes
// gbyte[i] .. gbyte[i + 1] (groups are contiguous in both).
var<workgroup> gelem: array<u32, TILE_GROUPS + 1u>;
var<workgroup> gbyte: array<u32, TILE_GROUPS + 1u>;
// What the 16 lanes of a group exchange: stage B's partial min/max (3 words a lane), lsq's
// partial sums (4 words a lane, `lsq_share`).
var<workgroup> xch: array<u32, 4u * QWG>;

// Running min/max in the total order on integer keys, with the bits of each end, and whether
// a NaN/Inf was seen. Strict comparisons, so the result is the one of the serial scan in any
// merge order: keys and bits are in one-to-one correspondence.
struct MinMax {
    mn: i32,
    mx: i32,
    mn_bits: u32,
    mx_bits: u32,
    bad: bool,
}

fn empty_min_max() -> MinMax {
    return MinMax(0x7fffffff, -0x7fffffff - 1, 0u, 0u, false);
}

fn merge(a: MinMax, b: MinMax) -> MinMax {
    var m = a;
    if b.mn < m.mn { m.mn = b.mn; m.mn_bits = b.mn_bits; }
    if b.mx > m.mx { m.mx = b.mx; m.mx_bits = b.mx_bits; }
    m.bad = m.bad || b.bad;
    return m;
}

fn add(m: MinMax, b: u32) -> MinMax {
    let k = order_key(b);
    return merge(m, MinMax(k, k, b, b, (b & INF_BITS) == INF_BITS));
}

// The group's parameters; writes its scale and zero point and flags its piece on failure.
fn finish_group(m: MinMax, max_code: u32, gi: u32, si: u32) -> Params {
    var p: Params;
    if m.bad {
        p = Params(m.mn_bits, 0u, 0u, 0u, FLAG_NON_FINITE);
    } else {
        p = group_params(m.mn_bits, m.mx_bits, max_code);
    }
    if (p.flags & (FLAG_NON_FINITE | FLAG_OVERFLOW)) != 0u {
        atomicOr(&errs[si], 1u);
    }
    scales[gi] = p.scale;
    zero_points[gi] = p.lo;
    return p;
}

// Output word `w` of tile `t`: OR it in where the neighbouring tile of the piece shares it.
fn store_word(w: u32, word: u32, t: Tile, s: Seg) {
    let end = t.byte0 + t.n_bytes;
    let shared_lo = w * 4u < t.byte0;
    let shared_hi = w * 4u + 4u > end && end < s.word_start * 4u + s.n_bytes;
    if shared_lo || shared_hi {
        atomicOr(&out_words[w], word);
    } else {
        atomicStore(&out_words[w], word);
    }
}

fn packed_bytes(n: u32, bits: u32) -> u32 {
    return (n * bits + 7u) >> 3u;
}

// log2 of the codes per byte (8 / bits), without a division.
fn log2_cpb(bits: u32) -> u32 {
    return 3u - firstTrailingBit(bits);
}

fn small_tile(t: Tile, s: Seg, lid: u32) {
    // Stage A: the 16-byte words covering the tile; the parts outside it are dropped (the
    // index wraps below elem0).
    let v0 = t.elem0 >> 2u;
    let nv = ((t.elem0 + t.n_elems + 3u) >> 2u) - v0;
    for (var j = lid; j < nv; j = j + QWG) {
        let v = input[v0 + j];
        for (var c = 0u; c < 4u; c = c + 1u) {
            let e = (v0 + j) * 4u + c - t.elem0;
            if e < t.n_elems {
                data[e] = v[c];
            }
        }
    }
    workgroupBarrier();

    // Stage B: 16 invocations per group (QWG / 16 groups at a time): lane j of a group scans
    // its elements j, j + 16, …, then its first lane merges the 16 partial min/max (the result
    // of the serial scan in any merge order: `merge`) and does the group's one division.
    // Every invocation reaches both barriers of a round (uniform control flow).
    let max_code = (1u << s.bits) - 1u;
    let lane = lid % LANES;
    let slot = lid / LANES;
    for (var base = 0u; base < t.n_groups; base = base + QWG / LANES) {
        let gi = base + slot;
        let c = s.col0 + t.lg0 + gi;
        let row_off = c / s.gpr;
        let col = c % s.gpr;
        // Offsets from the tile's first element / byte (u32 wrap-around cancels).
        let start = s.elem_start + row_off * s.row_len + col * s.group_size - s.col0 * s.group_size - t.elem0;
        let byte = s.word_start * 4u + row_off * s.row_bytes + col * s.group_bytes - s.col0 * s.group_bytes - t.byte0;
        let len = min(s.group_size, s.row_len - col * s.group_size);
        var m = empty_min_max();
        var n = 0u;
        if gi < t.n_groups {
            for (var i = lane; i < len; i = i + LANES) {
                m = add(m, data[start + i]);
            }
            n = select(0u, 1u, lane < len); // whether the lane saw an element
        }
        xch[3u * lid] = m.mn_bits;
        xch[3u * lid + 1u] = m.mx_bits;
        xch[3u * lid + 2u] = select(0u, 1u, m.bad) | (n << 1u);
        workgroupBarrier();
        if gi < t.n_groups && lane == 0u {
            var all = empty_min_max();
            for (var j = 0u; j < LANES; j = j + 1u) {
                let k = 3u * (lid + j);
                let flags = xch[k + 2u];
                if (flags & 2u) != 0u {
                    all = merge(all, MinMax(order_key(xch[k]), order_key(xch[k + 1u]), xch[k], xch[k + 1u], (flags & 1u) != 0u));
                }
            }
            gparams[gi] = finish_group(all, max_code, t.group0 + gi, t.seg);
            gelem[gi] = start;
            gbyte[gi] = byte;
            if gi + 1u == t.n_groups {
                gelem[gi + 1u] = start + len;
                gbyte[gi + 1u] = byte + packed_bytes(len, s.bits);
            }
        }
        workgroupBarrier();
    }
    if LSQ {
        // lsq.wgsl: refine the min/max grids; stage C codes with them (`tile_code`).
        lsq_tile(t, lid, max_code);
        workgroupBarrier();
    }

    // Stage C: one invocation per output word. Code slot i of a word is at bit i·bits, in
    // byte i >> lc; a group's codes fill consecutive slots from its first byte.
    let lc = log2_cpb(s.bits);
    let first = t.byte0 >> 2u;
    let nw = ((t.byte0 + t.n_bytes + 3u) >> 2u) - first;
    for (var j = lid; j < nw; j = j + QWG) {
        let w = first + j;
        // The group of the word's first byte in the tile: binary search over the ≤ TILE_GROUPS + 1 group
        // starts; later bytes step forward (every group has at least one byte).
        let rb0 = max(w * 4u, t.byte0) - t.byte0;
        var g = 0u;
        var hi = t.n_groups;
        while hi - g > 1u {
            let mid = (g + hi) >> 1u;
            if gbyte[mid] <= rb0 { g = mid; } else { hi = mid; }
        }
        // The current group, kept in registers until a byte of the next one comes.
        var gb = gbyte[g];
        var gb_next = gbyte[g + 1u];
        var base = gelem[g];
        var glen = gelem[g + 1u] - base;
        var p = gparams[g];
        var word = 0u;
        for (var i = 0u; i < (4u << lc); i = i + 1u) {
            let rb = w * 4u + (i >> lc) - t.byte0; // wraps before the tile
            if rb < t.n_bytes {
                if rb >= gb_next {
                    g = g + 1u;
                    gb = gb_next;
                    gb_next = gbyte[g + 1u];
                    base = gelem[g];
                    glen = gelem[g + 1u] - base;
                    p = gparams[g];
                }
                let e = ((rb - gb) << lc) + (i & ((1u << lc) - 1u));
                if e < glen {
                    word = word | (tile_code(data[base + e], p, max_code) << (i * s.bits));
                }
            }
        }
        store_word(w, word, t, s);
    }
}

// The code of `w` under a small tile's group parameters: min/max's, or (LSQ) the kept lsq grid
// as Params(zero, scale, inv).
fn tile_code(w: u32, p: Params, max_code: u32) -> u32 {
    if LSQ {
        return u32(lsq_code(f(w), Grid(p.scale, p.lo, p.inv_s), f32(max_code)));
    }
    return code(w, p, max_code);
}

// A group longer than a tile: the whole workgroup reduces it, then packs it. Never with LSQ
// (the backend runs lsq groups longer than a tile on the CPU).

fn big_group(t: Tile, s: Seg, lid: u32) {
    var m = empty_min_max();
    let v0 = t.elem0 >> 2u;
    let nv = ((t.elem0 + t.n_elems + 3u) >> 2u) - v0;
    for (var j = lid; j < nv; j = j + QWG) {
        let v = input[v0 + j];
        let e = (v0 + j) * 4u - t.elem0; // wraps before the group
        if e < t.n_elems { m = add(m, v.x); }
        if e + 1u < t.n_elems { m = add(m, v.y); }
        if e + 2u < t.n_elems { m = add(m, v.z); }
        if e + 3u < t.n_elems { m = add(m, v.w); }
    }
    // Tree reduction in `data`: five rows of QWG.
    for (var h = QWG; h > 0u; h = h >> 1u) {
        if lid < h {
            if h < QWG {
                let o = lid + h;
                m = merge(m, MinMax(bitcast<i32>(data[o]), bitcast<i32>(data[QWG + o]), data[2u * QWG + o], data[3u * QWG + o], data[4u * QWG + o] != 0u));
            }
            data[lid] = bitcast<u32>(m.mn);
            data[QWG + lid] = bitcast<u32>(m.mx);
            data[2u * QWG + lid] = m.mn_bits;
            data[3u * QWG + lid] = m.mx_bits;
            data[4u * QWG + lid] = u32(m.bad);
        }
        // Round h reads rows [h, 2h) and writes [0, h): one barrier per round.
        workgroupBarrier();
    }
    let max_code = (1u << s.bits) - 1u;
    if lid == 0u {
        gparams[0] = finish_group(m, max_code, t.group0, t.seg);
    }
    workgroupBarrier();
    let p = gparams[0];

    // Packing, in slices of TILE_ELEMS code slots (whole output words): each slice is loaded
    // into `data` like a tile (stage A), then packed from there (stage C). Code slot i of word
    // w is at bit i·bits, in byte i >> lc; the group's codes fill consecutive slots from its
    // first byte, so element = slot − slot of the group's first byte.
    let lc = log2_cpb(s.bits);
    let first = t.byte0 >> 2u;
    let nw = ((t.byte0 + t.n_bytes + 3u) >> 2u) - first;
    let slice_words = TILE_ELEMS >> (2u + lc);
    for (var w0 = first; w0 < first + nw; w0 = w0 + slice_words) {
        // Slot j of the slice is element e_lo + j of the group (wrapping before it); a slot is
        // used only when that is below n_elems.
        let e_lo = (w0 * 4u - t.byte0) << lc;
        let a = t.elem0 + e_lo; // the slice's first element in the input
        let v0 = a >> 2u;
        for (var j = lid; j < TILE_ELEMS / 4u + 1u; j = j + QWG) {
            let v = input[v0 + j];
            let d = (v0 + j) * 4u - a; // slot of v.x (wraps below 0)
            if d < TILE_ELEMS { data[d] = v.x; }
            if d + 1u < TILE_ELEMS { data[d + 1u] = v.y; }
            if d + 2u < TILE_ELEMS { data[d + 2u] = v.z; }
            if d + 3u < TILE_ELEMS { data[d + 3u] = v.w; }
        }
        workgroupBarrier();
        for (var j = lid; j < slice_words && w0 + j < first + nw; j = j + QWG) {
            var word = 0u;
            // Four slots per iteration: llvmpipe stops every loop of an invocation after 65,535
            // iterations in all, and a chunk-sized group must stay well below that.
            for (var i = 0u; i < (4u << lc); i = i + 4u) {
                let slot = (j << (2u + lc)) + i;
                word = word | (big_code(slot, e_lo, t.n_elems, p, max_code) << (i * s.bits));
                word = word | (big_code(slot + 1u, e_lo, t.n_elems, p, max_code) << ((i + 1u) * s.bits));
                word = word | (big_code(slot + 2u, e_lo, t.n_elems, p, max_code) << ((i + 2u) * s.bits));
                word = word | (big_code(slot + 3u, e_lo, t.n_elems, p, max_code) << ((i + 3u) * s.bits));
            }
            store_word(w0 + j, word, t, s);
        }
        // The next slice overwrites `data`.
        workgroupBarrier();
    }
}

// The code of slot `slot` of a big group's slice, or 0 for a slot outside the group.
fn big_code(slot: u32, e_lo: u32, n: u32, p: Params, max_code: u32) -> u32 {
    if e_lo + slot < n {
        return code(data[slot], p, max_code);
    }
    return 0u;
}

@compute @workgroup_size(QWG)
fn quantize_pass(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let ti = wid.y * nwg.x + wid.x;
    if ti >= u.n_units {
        return;
    }
    let t = tiles[ti];
    let s = segs[t.seg];
    if t.n_elems > TILE_ELEMS {
        big_group(t, s, lid);
    } else {
        small_tile(t, s, lid);
    }
}
