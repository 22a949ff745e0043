//! Uploading weights through one reusable staging buffer.
//!
//! `Queue::write_buffer` / `write_texture` and buffers mapped at creation each stage a whole
//! copy of what they write in host memory until the GPU has taken it, and a load writes every
//! weight before it waits. An [`Uploader`] instead copies pieces of weights into one mappable
//! buffer of [`STAGING_BYTES`], records their copies, and when it is full submits them and waits
//! for the buffer to come back before reusing it: a load's host memory holds one staging
//! buffer, whatever the model's size.

use std::cell::RefCell;

use super::Engine;
use crate::{Error, Result};

/// Size of the staging buffer: big enough that waiting for it costs little (a few dozen waits
/// for a 100 MB model), small next to any model.
pub const STAGING_BYTES: u64 = 4 << 20;

/// Copies offsets and texture rows start on this boundary (wgpu's bytes-per-row alignment, which
/// also satisfies every buffer and texel-copy offset rule).
const ALIGN: u64 = wgpu::COPY_BYTES_PER_ROW_ALIGNMENT as u64;

/// Weight uploads in flight through one staging buffer (see the module docs). Call
/// [`Uploader::finish`] once everything is written: copies still staged are submitted there.
pub struct Uploader<'a> {
    gpu: &'a Engine,
    staged: RefCell<Staged>,
}

/// The staging buffer (mapped while pieces are written into it), the bytes of it in use, the
/// copies out of it recorded since the last submission, and room to transpose texture rows in
/// (staging memory is write-only).
struct Staged {
    buf: wgpu::Buffer,
    used: u64,
    copies: wgpu::CommandEncoder,
    transposed: Vec<u8>,
}

impl<'a> Uploader<'a> {
    /// An uploader onto `gpu`'s queue, with a staging buffer of [`STAGING_BYTES`].
    pub fn new(gpu: &'a Engine) -> Self {
        Self::with_capacity(gpu, STAGING_BYTES)
    }

    /// An uploader whose staging buffer starts at `bytes` (a multiple of 256; it grows to hold
    /// any one piece bigger than that).
    pub fn with_capacity(gpu: &'a Engine, bytes: u64) -> Self {
        let staged = Staged {
            buf: staging_buffer(gpu, bytes),
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
        write_staged(&s.buf, from, &[bytes, &pad[..len as usize - bytes.len()]])?;
        let Staged { buf, copies, .. } = &mut *s;
        copies.copy_buffer_to_buffer(buf, from, dst, at, len);
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
            buf,
            copies,
            transposed,
            ..
        } = &mut *s;
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

    /// Submits the copies still staged. The staging buffer is freed once the GPU is done with
    /// them.
    pub fn finish(self) -> Result<()> {
        let s = self.staged.into_inner();
        s.buf.unmap();
        self.gpu.queue.submit([s.copies.finish()]);
        Ok(())
    }

    /// The offset of `len` free bytes in the staging buffer: after those in use, or at 0 once the
    /// copies recorded so far are submitted and done (a buffer big enough if `len` is more than
    /// [`STAGING_BYTES`]).
    fn reserve(&self, s: &mut Staged, len: u64) -> Result<u64> {
        let from = s.used.next_multiple_of(ALIGN);
        if from + len <= s.buf.size() {
            s.used = from + len;
            return Ok(from);
        }
        s.buf.unmap();
        let copies = std::mem::replace(&mut s.copies, encoder(self.gpu));
        self.gpu.queue.submit([copies.finish()]);
        if len > s.buf.size() {
            s.buf = staging_buffer(self.gpu, len.next_multiple_of(ALIGN));
        } else {
            self.remap(&s.buf)?;
        }
        s.used = len;
        Ok(0)
    }

    /// Waits for the GPU to finish the submitted copies out of `buf` and maps it for writing.
    fn remap(&self, buf: &wgpu::Buffer) -> Result<()> {
        let (tx, rx) = std::sync::mpsc::channel();
        buf.slice(..).map_async(wgpu::MapMode::Write, move |r| {
            let _ = tx.send(r);
        });
        self.gpu.wait()?;
        rx.recv()
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
