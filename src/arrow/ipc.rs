//! Reading Arrow IPC bytes from outside without trusting their sizes.
//!
//! arrow-ipc allocates what a file declares before it checks it against the file: a footer
//! block's body length, a compressed buffer's uncompressed length. A corrupt file that declares
//! terabytes aborts the process (allocation failure is not an error in Rust). So every block is
//! checked to lie inside the file, and every compressed buffer to declare no more than this
//! machine's memory, before arrow-ipc decodes it; the file's bytes are decoded in place
//! (`FileDecoder`), with no copy.

use std::sync::Arc;

use arrow_array::RecordBatch;
use arrow_buffer::Buffer;
use arrow_ipc::convert::fb_to_schema;
use arrow_ipc::reader::{read_footer_length, FileDecoder};
use arrow_ipc::{root_as_footer, root_as_message, Block, MessageHeader};
use arrow_schema::SchemaRef;

const MAGIC: &[u8] = b"ARROW1";
const CONTINUATION: [u8; 4] = [0xff; 4];

/// Every record batch of an Arrow IPC file held in `bytes`.
pub fn read_file(bytes: Buffer) -> Result<(SchemaRef, Vec<RecordBatch>), String> {
    let n = bytes.len();
    if n < 2 * MAGIC.len() + 10 || !bytes.starts_with(MAGIC) || !bytes.ends_with(MAGIC) {
        return Err("not an Arrow IPC file (no ARROW1 magic at both ends)".into());
    }
    let trailer = n - 10;
    let footer_len = read_footer_length(bytes[trailer..].try_into().expect("10 bytes")).map_err(|e| e.to_string())?;
    let footer_start = trailer.checked_sub(footer_len).filter(|&s| s >= 8).ok_or("the footer is longer than the file")?;
    let footer = root_as_footer(&bytes[footer_start..trailer]).map_err(|e| format!("unreadable footer: {e}"))?;
    let schema = Arc::new(fb_to_schema(footer.schema().ok_or("the footer has no schema")?));
    let mut decoder = FileDecoder::new(schema.clone(), footer.version());

    let block_bytes = |block: &Block| -> Result<Buffer, String> {
        let (offset, meta, body) = (block.offset(), block.metaDataLength(), block.bodyLength());
        let range = usize::try_from(offset).ok().zip(usize::try_from(meta).ok()).zip(usize::try_from(body).ok());
        let (start, len) = range
            .and_then(|((o, m), b)| Some((o, m.checked_add(b)?)))
            .filter(|&(o, l)| o.checked_add(l).is_some_and(|end| end <= footer_start))
            .ok_or_else(|| format!("a block (offset {offset}, {meta} + {body} bytes) lies outside the file"))?;
        let block_buf = bytes.slice_with_length(start, len);
        check_message(&block_buf[..meta as usize], &block_buf[meta as usize..])?;
        Ok(block_buf)
    };
    for block in footer.dictionaries().iter().flatten() {
        decoder.read_dictionary(block, &block_bytes(block)?).map_err(|e| e.to_string())?;
    }
    let mut batches = Vec::new();
    for block in footer.recordBatches().iter().flatten() {
        if let Some(batch) = decoder.read_record_batch(block, &block_bytes(block)?).map_err(|e| e.to_string())? {
            batches.push(batch);
        }
    }
    Ok((schema, batches))
}

/// Checks an Arrow IPC *stream* message by message (each inside the bytes, each compressed
/// buffer within memory), so that a reader of it allocates nothing the bytes do not back.
pub fn check_stream(mut bytes: &[u8]) -> Result<(), String> {
    while !bytes.is_empty() {
        let (prefix, meta_len) = match bytes {
            [0xff, 0xff, 0xff, 0xff, a, b, c, d, ..] => (8, i32::from_le_bytes([*a, *b, *c, *d])),
            [a, b, c, d, ..] => (4, i32::from_le_bytes([*a, *b, *c, *d])),
            _ => return Err("a message prefix is cut short".into()),
        };
        if meta_len == 0 {
            return Ok(()); // end of stream
        }
        let meta_end = usize::try_from(meta_len).ok().and_then(|m| m.checked_add(prefix)).filter(|&e| e <= bytes.len()).ok_or("a message is longer than the stream")?;
        let message = root_as_message(&bytes[prefix..meta_end]).map_err(|e| format!("unreadable message: {e}"))?;
        let body_end = usize::try_from(message.bodyLength())
            .ok()
            .and_then(|b| b.checked_add(meta_end))
            .filter(|&e| e <= bytes.len())
            .ok_or("a message body is longer than the stream")?;
        check_message(&bytes[..meta_end], &bytes[meta_end..body_end])?;
        bytes = &bytes[body_end..];
    }
    Ok(())
}

/// `meta`: a message's metadata with its prefix; `body`: its body. Every buffer must lie in the
/// body, and a compressed one must not declare more bytes than this machine has.
fn check_message(meta: &[u8], body: &[u8]) -> Result<(), String> {
    let flatbuffer = match meta {
        [0xff, 0xff, 0xff, 0xff, _, _, _, _, rest @ ..] => rest,
        [_, _, _, _, rest @ ..] if !meta.starts_with(&CONTINUATION) => rest,
        _ => return Err("a message prefix is cut short".into()),
    };
    let message = root_as_message(flatbuffer).map_err(|e| format!("unreadable message: {e}"))?;
    let batch = match message.header_type() {
        MessageHeader::RecordBatch => message.header_as_record_batch(),
        MessageHeader::DictionaryBatch => message.header_as_dictionary_batch().and_then(|d| d.data()),
        _ => None,
    };
    let Some(batch) = batch else { return Ok(()) };
    let compressed = batch.compression().is_some();
    for buffer in batch.buffers().iter().flatten() {
        let (offset, length) = (buffer.offset(), buffer.length());
        let range = usize::try_from(offset).ok().zip(usize::try_from(length).ok());
        let Some((start, len)) = range.filter(|&(o, l)| o.checked_add(l).is_some_and(|end| end <= body.len())) else {
            return Err(format!("a buffer (offset {offset}, {length} bytes) lies outside its message body"));
        };
        if compressed && len >= 8 {
            let declared = i64::from_le_bytes(body[start..start + 8].try_into().expect("8 bytes"));
            if declared > memory_bytes() {
                return Err(format!("a compressed buffer declares {declared} bytes uncompressed, more than this machine's memory"));
            }
            // Memory alone was not enough: a 675-byte stream whose LZ4 buffer declared 25 GB, just
            // under this machine's 23.5 GiB, aborted on the allocation (a fuzz finding).
            if declared > (len as i64).saturating_mul(MAX_RATIO) {
                return Err(format!("a compressed buffer of {len} bytes declares {declared} bytes uncompressed, more than any LZ4 or zstd data expands to"));
            }
        }
    }
    Ok(())
}

/// How far compressed bytes can expand: LZ4 stays under 256×; zstd's densest block (RLE, a
/// 3-byte header and one byte for up to 128 KiB) under 2^15×; 2^16 leaves room for both.
const MAX_RATIO: i64 = 1 << 16;

/// Physical memory, the most any one buffer could need.
fn memory_bytes() -> i64 {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: sysconf only reads system configuration.
        let (pages, page) = unsafe { (libc::sysconf(libc::_SC_PHYS_PAGES), libc::sysconf(libc::_SC_PAGESIZE)) };
        if pages > 0 && page > 0 {
            return pages.saturating_mul(page);
        }
    }
    1 << 36
}
