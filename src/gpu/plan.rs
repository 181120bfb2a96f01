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

/// Bytes of one `Params` struct. `staging::caps` still bounds the groups per chunk by it
/// (the fused kernel keeps parameters in workgroup memory, not in a buffer).
pub const PARAMS_BYTES: u64 = 20;

/// Elements and groups of one tile (`TILE_ELEMS`, `TILE_GROUPS` in `shaders/quantize.wgsl`):
/// one workgroup's share, held in its workgroup memory.
pub const TILE_ELEMS: usize = 2048;
pub const TILE_GROUPS: usize = 128;

/// Mirror of `struct Tile` in `shaders/quantize.wgsl`: a run of whole groups of one piece,
/// quantized by one workgroup. Offsets are in the chunk's buffers.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct Tile {
    pub seg: u32,
    pub group0: u32,
    pub lg0: u32,
    pub n_groups: u32,
    pub elem0: u32,
    pub n_elems: u32,
    pub byte0: u32,
    pub n_bytes: u32,
}

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

/// The tiles of `chunk`, in order: consecutive groups of a piece go to one tile while it stays
/// within `TILE_ELEMS` elements and `TILE_GROUPS` groups; a longer group gets a tile of its
/// own (the kernel reduces it with the whole workgroup). Also returns whether two tiles share
/// an output word, i.e. a tile other than a piece's first starts inside a word: the kernel
/// ORs such words, so the packed buffer must be cleared first.
pub fn tiles(chunk: &Chunk) -> (Vec<Tile>, bool) {
    let mut tiles = Vec::new();
    let mut shared = false;
    for (si, p) in chunk.pieces.iter().enumerate() {
        let s = &p.seg;
        let (gs, bits) = (s.group_size as usize, s.bits as usize);
        let mut col = s.col0 as usize;
        let (mut elem, mut byte) = (s.elem_start, s.word_start * 4);
        let mut cur = Tile::default();
        for lg in 0..s.n_groups {
            let len = gs.min(s.row_len as usize - col * gs);
            let nb = (len * bits).div_ceil(8);
            if cur.n_groups > 0 && (cur.n_elems as usize + len > TILE_ELEMS || cur.n_groups as usize == TILE_GROUPS) {
                tiles.push(cur);
                cur.n_groups = 0;
            }
            if cur.n_groups == 0 {
                cur = Tile { seg: si as u32, group0: s.group_start + lg, lg0: lg, n_groups: 0, elem0: elem, n_elems: 0, byte0: byte, n_bytes: 0 };
                shared |= lg > 0 && byte % 4 != 0;
            }
            cur.n_groups += 1;
            cur.n_elems += len as u32;
            cur.n_bytes += nb as u32;
            elem += len as u32;
            byte += nb as u32;
            col = if col + 1 == s.gpr as usize { 0 } else { col + 1 };
        }
        if cur.n_groups > 0 {
            tiles.push(cur);
        }
    }
    (tiles, shared)
}

/// An upper bound on `tiles(c).0.len()` for any chunk within `caps`. Every tile is closed by
/// one of: the next group would overflow it (then it and the next tile hold more than
/// `TILE_ELEMS` elements together, so fewer than 2·elems/TILE_ELEMS such tiles), `TILE_GROUPS`
/// groups, or the end of its piece.
pub fn max_tiles(caps: &Caps) -> usize {
    2 * caps.elems / TILE_ELEMS + caps.groups / TILE_GROUPS + caps.segs + 1
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

    fn chunks_of(ls: &[(usize, usize, BitWidth, i64)], caps: &Caps) -> (Vec<GroupLayout>, Vec<Chunk>) {
        let ls: Vec<GroupLayout> = ls.iter().map(|&(r, c, b, g)| GroupLayout::new(r, c, QuantConfig::new(b, g).unwrap())).collect();
        let jobs: Vec<(usize, GroupLayout)> = ls.iter().copied().enumerate().collect();
        let chunks = plan(&jobs, caps);
        (ls, chunks)
    }

    /// Tiles cover every group of every piece once, in order, with the elements and bytes the
    /// layout gives them, within the tile limits (one group alone when it is longer), and
    /// never more than `max_tiles`.
    #[test]
    fn tiles_cover_the_pieces() {
        let caps = Caps { elems: 1 << 16, groups: 1 << 14, words: (1 << 14) + 64, segs: 64 };
        let (ls, chunks) = chunks_of(
            &[(5, 2051, BitWidth::B2, 8), (3, 20000, BitWidth::B4, 8192), (2, 2056 * 3 + 5, BitWidth::B2, 2056), (300, 1, BitWidth::B8, 8), (7, 17, BitWidth::B2, 16)],
            &caps,
        );
        for c in &chunks {
            let (tiles, _) = tiles(c);
            assert!(tiles.len() <= max_tiles(&caps));
            for (si, p) in c.pieces.iter().enumerate() {
                let l = &ls[p.job];
                let mine: Vec<&Tile> = tiles.iter().filter(|t| t.seg as usize == si).collect();
                let mut lg = 0;
                for t in mine {
                    assert_eq!(t.lg0, lg);
                    let (g0, g1) = (p.groups.start + lg as usize, p.groups.start + (lg + t.n_groups) as usize);
                    let e = elems_of(l, g0, g1);
                    let b = bytes_of(l, g0, g1);
                    assert_eq!(t.group0, p.seg.group_start + lg);
                    assert_eq!(t.elem0 as usize, p.seg.elem_start as usize + e.start - p.elems.start);
                    assert_eq!(t.n_elems as usize, e.len());
                    assert_eq!(t.byte0 as usize, p.seg.word_start as usize * 4 + b.start - p.bytes.start);
                    assert_eq!(t.n_bytes as usize, b.len());
                    assert!(t.n_groups as usize <= TILE_GROUPS);
                    assert!(t.n_elems as usize <= TILE_ELEMS || t.n_groups == 1);
                    lg += t.n_groups;
                }
                assert_eq!(lg, p.seg.n_groups);
            }
        }
    }

    /// Which layouts put two tiles in one word (the kernel then ORs into a cleared buffer);
    /// tests/gpu_exact.rs relies on these to reach that path.
    #[test]
    fn shared_words_only_at_unaligned_tile_starts() {
        let caps = Caps { elems: 4 << 20, groups: 1 << 20, words: (1 << 20) + 4096, segs: 4096 };
        let shared = |l: (usize, usize, BitWidth, i64)| chunks_of(&[l], &caps).1.iter().any(|c| tiles(c).1);
        assert!(!shared((64, 4096, BitWidth::B4, 128)));
        assert!(!shared((3, 100_000, BitWidth::B8, 8192)));
        assert!(shared((5, 2051, BitWidth::B2, 8)));
        assert!(shared((4, 100_001, BitWidth::B2, 16)));
        assert!(shared((2, 2056 * 3 + 5, BitWidth::B2, 2056)));
        assert!(shared((3, 1001, BitWidth::B4, 8)));
    }
}
