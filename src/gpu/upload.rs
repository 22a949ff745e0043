//! Uploading weights through two reusable staging buffers.
//!
//! `Queue::write_buffer` / `write_texture` and buffers mapped at creation each stage a whole
//! copy of what they write in host memory until the GPU has taken it, and a load writes every
//! weight before it waits. An [`Uploader`] instead copies pieces of weights into a mappable
//! buffer of [`STAGING_BYTES`] and records their copies; when it is full it submits them and
//! goes on filling a second buffer while the GPU copies out of the first, then back: a load's
//! host memory holds two staging buffers, whatever the model's size. (With one buffer, filling
//! waited for every copy: GPT-2 124M loaded in 0.89 s in the buffer layout on lavapipe, against
//! 0.65-0.67 s with two.)

use std::cell::RefCell;
use std::sync::mpsc::Receiver;

use super::Engine;
use crate::{Error, Result};

/// Size of each staging buffer: big enough that handing one over costs little (a few dozen
/// times for a 100 MB model), small next to any model.
pub const STAGING_BYTES: u64 = 4 << 20;

/// Copies offsets and texture rows start on this boundary (wgpu's bytes-per-row alignment, which
/// also satisfies every buffer and texel-copy offset rule).
const ALIGN: u64 = wgpu::COPY_BYTES_PER_ROW_ALIGNMENT as u64;

/// Weight uploads in flight through the staging buffers (see the module docs). Call
/// [`Uploader::finish`] once everything is written: copies still staged are submitted there.
pub struct Uploader<'a> {
    gpu: &'a Engine,
    staged: RefCell<Staged>,
}

/// Where a staging buffer's mapping reports.
type MapCallback = Receiver<std::result::Result<(), wgpu::BufferAsyncError>>;

/// Two staging buffers, one filled while the GPU copies out of the other: the one being filled
/// (mapped), the bytes of it in use, the copies out of it recorded since it was last handed
/// over, and room to transpose texture rows in (staging memory is write-only).
struct Staged {
    bufs: [wgpu::Buffer; 2],
    /// The buffer being filled.
    cur: usize,
    /// The other's submission and the callback of its mapping, until it is mapped again.
    other: Option<(wgpu::SubmissionIndex, MapCallback)>,
    used: u64,
    copies: wgpu::CommandEncoder,
    transposed: Vec<u8>,
}

impl Staged {
    fn buf(&self) -> &wgpu::Buffer {
        &self.bufs[self.cur]
    }
}

impl<'a> Uploader<'a> {
    /// An uploader onto `gpu`'s queue, with staging buffers of [`STAGING_BYTES`].
    pub fn new(gpu: &'a Engine) -> Self {
        Self::with_capacity(gpu, STAGING_BYTES)
    }

    /// An uploader whose staging buffers start at `bytes` (a multiple of 256; one grows to hold
    /// any one piece bigger than that).
    pub fn with_capacity(gpu: &'a Engine, bytes: u64) -> Self {
        let staged = Staged {
            bufs: [0, 1].map(|_| staging_buffer(gpu, bytes)),
            cur: 0,
            other: None,
            used: 0,
            copies: encoder(gpu),
            transposed: Vec::new(),
        };
        Uploader {
            gpu,
            staged: RefCell::new(staged),
        }
    }

    /// The engine the uploads go to.
    pub fn gpu(&self) -> &'a Engine {
        self.gpu
    }

    /// Copies `bytes` into `dst` at byte `at` (a multiple of 4). An odd tail is padded with
    /// zeros to 4 bytes, which `dst` must have room for.
    pub fn buffer(&self, dst: &wgpu::Buffer, at: u64, bytes: &[u8]) -> Result<()> {
        let len = (bytes.len() as u64).next_multiple_of(wgpu::COPY_BUFFER_ALIGNMENT);
        let mut s = self.staged.borrow_mut();
        let from = self.reserve(&mut s, len)?;
        let pad = [0u8; 4];
        write_staged(s.buf(), from, &[bytes, &pad[..len as usize - bytes.len()]])?;
        let Staged {
            bufs, cur, copies, ..
        } = &mut *s;
        copies.copy_buffer_to_buffer(&bufs[*cur], from, dst, at, len);
        Ok(())
    }

    /// Writes weight rows `row0 ..` of a weight texture ([`Engine::weight_texture`]: texel `i`
    /// of weight row `r` is texel (r, i)) from encoded row-major bytes, transposing the 16-byte
    /// texels into the staging buffer.
    pub fn weight_rows(&self, tex: &wgpu::Texture, row0: u32, bytes: &[u8]) -> Result<()> {
        let texels = tex.height() as usize;
        let rows = bytes.len() / (16 * texels);
        let pitch = (16 * rows as u64).next_multiple_of(ALIGN);
        let mut s = self.staged.borrow_mut();
        let from = self.reserve(&mut s, pitch * texels as u64)?;
        let Staged {
            bufs,
            cur,
            copies,
            transposed,
            ..
        } = &mut *s;
        let buf = &bufs[*cur];
        transposed.clear();
        transposed.resize((pitch * texels as u64) as usize, 0);
        for (r, row) in bytes.chunks_exact(16 * texels).enumerate() {
            for (i, texel) in row.chunks_exact(16).enumerate() {
                transposed[i * pitch as usize + 16 * r..][..16].copy_from_slice(texel);
            }
        }
        write_staged(buf, from, &[transposed])?;
        copies.copy_buffer_to_texture(
            wgpu::TexelCopyBufferInfo {
                buffer: buf,
                layout: wgpu::TexelCopyBufferLayout {
                    offset: from,
                    bytes_per_row: Some(pitch as u32),
                    rows_per_image: None,
                },
            },
            wgpu::TexelCopyTextureInfo {
                texture: tex,
                mip_level: 0,
                origin: wgpu::Origin3d { x: row0, y: 0, z: 0 },
                aspect: wgpu::TextureAspect::All,
            },
            wgpu::Extent3d {
                width: rows as u32,
                height: texels as u32,
                depth_or_array_layers: 1,
            },
        );
        Ok(())
    }

    /// Submits the copies still staged. The staging buffers are freed once the GPU is done with
    /// them.
    pub fn finish(self) -> Result<()> {
        let s = self.staged.into_inner();
        s.buf().unmap();
        self.gpu.queue.submit([s.copies.finish()]);
        Ok(())
    }

    /// The offset of `len` free bytes in the buffer being filled: after those in use or, when
    /// it is full, at 0 in the other buffer, once the GPU has copied out of that one (a buffer
    /// big enough if `len` is more than [`STAGING_BYTES`]). The full one is handed to the GPU.
    fn reserve(&self, s: &mut Staged, len: u64) -> Result<u64> {
        let from = s.used.next_multiple_of(ALIGN);
        if from + len <= s.buf().size() {
            s.used = from + len;
            return Ok(from);
        }
        s.buf().unmap();
        let copies = std::mem::replace(&mut s.copies, encoder(self.gpu));
        let submitted = self.gpu.queue.submit([copies.finish()]);
        let (tx, rx) = std::sync::mpsc::channel();
        s.buf().slice(..).map_async(wgpu::MapMode::Write, move |r| {
            let _ = tx.send(r);
        });
        let handed = (submitted, rx);
        s.cur ^= 1;
        match s.other.replace(handed) {
            _ if len > s.buf().size() => {
                s.bufs[s.cur] = staging_buffer(self.gpu, len.next_multiple_of(ALIGN))
            }
            Some((index, mapped)) => self.remapped(index, &mapped)?,
            None => {}
        }
        s.used = len;
        Ok(0)
    }

    /// Waits for submission `index` (the copies out of a buffer) and that buffer's mapping.
    fn remapped(&self, index: wgpu::SubmissionIndex, mapped: &MapCallback) -> Result<()> {
        let wait = wgpu::PollType::Wait {
            submission_index: Some(index),
            timeout: None,
        };
        (self.gpu.device.poll(wait)).map_err(|e| Error::Gpu(e.to_string()))?;
        self.gpu.check()?;
        mapped
            .recv()
            .map_err(|_| Error::Gpu("staging buffer map callback was dropped".into()))?
            .map_err(|e| Error::Gpu(format!("cannot map the staging buffer: {e}")))
    }
}

fn staging_buffer(gpu: &Engine, bytes: u64) -> wgpu::Buffer {
    gpu.device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("upload staging"),
        size: bytes,
        usage: wgpu::BufferUsages::MAP_WRITE | wgpu::BufferUsages::COPY_SRC,
        mapped_at_creation: true,
    })
}

fn encoder(gpu: &Engine) -> wgpu::CommandEncoder {
    (gpu.device).create_command_encoder(&wgpu::CommandEncoderDescriptor {
        label: Some("upload copies"),
    })
}

/// Writes `pieces`, one after the other, at byte `from` of the mapped staging buffer.
fn write_staged(buf: &wgpu::Buffer, from: u64, pieces: &[&[u8]]) -> Result<()> {
    let len: usize = pieces.iter().map(|p| p.len()).sum();
    let mut view = buf
        .slice(from..from + len as u64)
        .get_mapped_range_mut()
        .map_err(|e| Error::Gpu(format!("cannot write the staging buffer: {e:?}")))?;
    let mut at = 0;
    for p in pieces {
        view.slice(at..at + p.len()).copy_from_slice(p);
        at += p.len();
    }
    Ok(())
}
