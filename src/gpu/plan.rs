//! Cutting a list of layers into chunks that fit the device buffers.
//!
//! A chunk is a list of pieces; a piece is a run of whole groups of one layer. Every piece
//! starts on a fresh u32 word of the packed buffer (the padding is never read back), so each
//! output word belongs to one piece and one byte to one group; a big layer becomes several
//! pieces in several chunks, a lot of small layers share one chunk and one dispatch.

use bytemuck::{Pod, Zeroable};

use crate::quant::GroupLayout;

/// Mirror of `struct Seg` in `shaders/common.wgsl`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, Pod, Zeroable)]
pub struct Seg {
    pub group_start: u32,
    pub word_start: u32,
    pub elem_start: u32,
    pub col0: u32,
    pub row_len: u32,
    pub group_size: u32,
    pub gpr: u32,
    pub row_bytes: u32,
    pub group_bytes: u32,
    pub bits: u32,
    pub n_groups: u32,
    pub n_bytes: u32,
}

/// Mirror of `struct Uniforms`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, Pod, Zeroable)]
pub struct Uniforms {
    pub n_segs: u32,
    pub n_units: u32,
    pub zero_mask: u32,
    pub pad: u32,
}

/// Bytes of one `Params` slot written by pass 1.
pub const PARAMS_BYTES: u64 = 20;

#[derive(Clone, Copy, Debug)]
pub struct Caps {
    pub elems: usize,
    pub groups: usize,
    pub words: usize,
    pub segs: usize,
}

#[derive(Clone, Debug)]
pub struct Piece {
    pub job: usize,
    pub groups: std::ops::Range<usize>,
    pub elems: std::ops::Range<usize>,
    pub bytes: std::ops::Range<usize>,
    pub seg: Seg,
}

#[derive(Clone, Debug, Default)]
pub struct Chunk {
    pub pieces: Vec<Piece>,
    pub n_elems: usize,
    pub n_groups: usize,
    pub n_words: usize,
}

/// Whether the GPU kernels can take this layout at all (u32 index arithmetic, one group per
/// chunk at least); others go to the CPU backend.
pub fn fits(l: &GroupLayout, caps: &Caps) -> bool {
    l.group_size <= caps.elems && l.row_len <= (1 << 30) && l.row_bytes() <= (1 << 30) && l.n_elements() > 0
}

fn elems_of(l: &GroupLayout, g0: usize, g1: usize) -> std::ops::Range<usize> {
    l.group_elements(g0).start..l.group_elements(g1 - 1).end
}

fn bytes_of(l: &GroupLayout, g0: usize, g1: usize) -> std::ops::Range<usize> {
    l.group_byte_range(g0).start..l.group_byte_range(g1 - 1).end
}

/// Chunks covering `layouts[i]` for every `i` in `jobs` (all of which satisfy [`fits`]).
pub fn plan(layouts: &[(usize, GroupLayout)], caps: &Caps) -> Vec<Chunk> {
    let mut chunks = Vec::new();
    let mut cur = Chunk::default();
    for &(job, l) in layouts {
        let n = l.n_groups();
        let mut g0 = 0;
        while g0 < n {
            let fits_in = |g1: usize, c: &Chunk| {
                let e = elems_of(&l, g0, g1).len();
                let w = bytes_of(&l, g0, g1).len().div_ceil(4);
                c.n_elems + e <= caps.elems && c.n_groups + (g1 - g0) <= caps.groups && c.n_words + w <= caps.words
            };
            if cur.pieces.len() == caps.segs || !fits_in(g0 + 1, &cur) {
                chunks.push(std::mem::take(&mut cur));
                continue;
            }
            // The largest g1 that fits (monotone in g1).
            let (mut ok, mut bad) = (g0 + 1, n + 1);
            while bad - ok > 1 {
                let mid = (ok + bad) / 2;
                if fits_in(mid, &cur) { ok = mid } else { bad = mid }
            }
            let g1 = ok;
            let elems = elems_of(&l, g0, g1);
            let bytes = bytes_of(&l, g0, g1);
            let gpr = l.groups_per_row();
            let seg = Seg {
                group_start: cur.n_groups as u32,
                word_start: cur.n_words as u32,
                elem_start: cur.n_elems as u32,
                col0: (g0 % gpr) as u32,
                row_len: l.row_len as u32,
                group_size: l.group_size as u32,
                gpr: gpr as u32,
                row_bytes: l.row_bytes() as u32,
                group_bytes: l.group_bytes() as u32,
                bits: l.bit_width.bits(),
                n_groups: (g1 - g0) as u32,
                n_bytes: bytes.len() as u32,
            };
            cur.n_elems += elems.len();
            cur.n_groups += g1 - g0;
            cur.n_words += bytes.len().div_ceil(4);
            cur.pieces.push(Piece { job, groups: g0..g1, elems, bytes, seg });
            g0 = g1;
        }
    }
    if !cur.pieces.is_empty() {
        chunks.push(cur);
    }
    chunks
}

/// Workgroup counts for `n` invocations of 256: 2-D when more than `max_dim` workgroups.
pub fn dispatch_dims(n: usize, max_dim: u32) -> (u32, u32) {
    let wgs = n.div_ceil(256).max(1);
    let x = wgs.min(max_dim as usize);
    (x as u32, wgs.div_ceil(x) as u32)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::{BitWidth, QuantConfig};

    #[test]
    fn pieces_tile_each_layer_and_respect_caps() {
        let caps = Caps { elems: 1000, groups: 50, words: 300, segs: 3 };
        let ls: Vec<(usize, GroupLayout)> = [(7usize, 33usize, 8i64, BitWidth::B2), (1, 5000, 16, BitWidth::B8), (40, 1, 8, BitWidth::B4), (3, 100, 24, BitWidth::B4)]
            .iter()
            .enumerate()
            .map(|(i, &(r, c, g, b))| (i, GroupLayout::new(r, c, QuantConfig::new(b, g).unwrap())))
            .collect();
        let chunks = plan(&ls, &caps);
        for (i, l) in &ls {
            let mut next = 0;
            for p in chunks.iter().flat_map(|c| &c.pieces).filter(|p| p.job == *i) {
                assert_eq!(p.groups.start, next);
                next = p.groups.end;
            }
            assert_eq!(next, l.n_groups());
        }
        for c in &chunks {
            assert!(c.n_elems <= caps.elems && c.n_groups <= caps.groups && c.n_words <= caps.words && c.pieces.len() <= caps.segs);
        }
        assert_eq!(dispatch_dims(65_535 * 256 + 1, 65_535), (65_535, 2));
    }
}
