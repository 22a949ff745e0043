//! The GPU: adapter choice, device, limits, error capture, and small buffer helpers.

// The kernels' pipelines and bindings, the weight formats and weight storage.
internal_mods!(format, kernels, registry, tensor, upload);

use std::sync::mpsc::TryRecvError;
use std::sync::{Arc, Mutex};

use wgpu::util::DeviceExt;

use crate::gpu::tensor::WeightDtype;
use crate::{Error, Result};

/// One adapter as `wgpt info` shows it.
#[derive(Clone, Debug)]
pub struct AdapterSummary {
    /// Position in enumeration order: the number `--adapter N` takes.
    pub index: usize,
    /// Name, vendor, backend and device type.
    pub info: wgpu::AdapterInfo,
    /// The most the adapter offers (what [`Engine::from_adapter`] asks for).
    pub limits: wgpu::Limits,
    /// Optional features it supports (wgpt uses subgroups, f16 and timestamp queries if present).
    pub features: wgpu::Features,
}

/// A wgpu device and queue plus what the model code needs to know about them: created by wgpt
/// ([`Engine::new`]) or handed in by an application that already renders with wgpu
/// ([`Engine::from_device`]). Shared as `Arc<Engine>` by every model loaded on it.
pub struct Engine {
    /// The device every buffer, pipeline and command encoder is created on.
    pub device: wgpu::Device,
    /// The queue steps are submitted to and uploads written through.
    pub queue: wgpu::Queue,
    /// The adapter behind `device` (name, backend, device type).
    pub info: wgpu::AdapterInfo,
    /// The device's actual limits, which size weight chunks, the KV cache and scratch buffers.
    pub limits: wgpu::Limits,
    /// The first uncaptured wgpu error since the last [`Engine::check`] (wgpu's default handler
    /// would panic). `None` on an application's device, whose handler wgpt leaves alone.
    error: Option<Arc<Mutex<Option<String>>>>,
    /// Why the device was lost, once it is (set by wgpu's device-lost callback).
    lost: Arc<Mutex<Option<String>>>,
    /// Every compute pipeline built on the device, by what specialises it.
    pub(crate) registry: registry::Registry,
}

/// The limits wgpt's kernels need: WebGPU's compute defaults (256-wide workgroups, 16 KiB of
/// workgroup memory, 4 storage buffers per kernel). Pass these (or more) as `required_limits`
/// when creating a device for [`Engine::from_device`]; bigger `max_storage_buffer_binding_size`
/// and `max_buffer_size` let weights sit in fewer chunks.
pub fn required_limits() -> wgpu::Limits {
    wgpu::Limits {
        max_compute_workgroup_storage_size: 16384,
        max_compute_invocations_per_workgroup: 256,
        max_compute_workgroup_size_x: 256,
        max_compute_workgroup_size_y: 8,
        max_compute_workgroup_size_z: 1,
        max_compute_workgroups_per_dimension: 65535,
        max_storage_buffers_per_shader_stage: 4,
        max_uniform_buffers_per_shader_stage: 3,
        max_storage_buffer_binding_size: 1 << 24,
        max_buffer_size: 1 << 24,
        ..wgpu::Limits::downlevel_webgl2_defaults()
    }
}

/// The texture layout's extra needs (see `matmul_texture.wgsl`): two read-only storage textures
/// per kernel and a 64 KiB uniform binding for gemv_texture's input.
pub fn texture_layout_limits() -> wgpu::Limits {
    wgpu::Limits {
        max_storage_textures_per_shader_stage: 2,
        max_uniform_buffer_binding_size: 4 * kernels::wg::GEMV_UNIFORM_FLOATS as u64,
        ..required_limits()
    }
}

/// `Err` naming every limit of `limits` below `needed`, and the fix.
pub(crate) fn check_limits(limits: &wgpu::Limits, needed: &wgpu::Limits, what: &str) -> Result<()> {
    let mut missing = Vec::new();
    needed.check_limits_with_fail_fn(limits, false, |name, want, have| {
        missing.push(format!("{name} = {have} (needs {want})"))
    });
    if missing.is_empty() {
        return Ok(());
    }
    Err(Error::Limits(format!(
        "the device is too limited for {what}: {}; create it with at least \
         wgpt::gpu::required_limits() as its required_limits (the adapter may offer more than \
         the device was given), or use another adapter",
        missing.join(", ")
    )))
}

/// Records why `device` is lost when wgpu says so, for [`Engine::check`]. (wgpu calls the
/// callback on a real loss, on `Device::destroy`, and with `Dropped` when the device goes away.)
fn watch_loss(device: &wgpu::Device) -> Arc<Mutex<Option<String>>> {
    let lost = Arc::new(Mutex::new(None));
    let sink = lost.clone();
    device.set_device_lost_callback(move |reason, msg| {
        log::warn!("wgpu: device lost ({reason:?}): {msg}");
        let mut slot = sink.lock().unwrap_or_else(|p| p.into_inner());
        slot.get_or_insert_with(|| format!("{reason:?}: {msg}"));
    });
    lost
}

/// A readback in flight (see [`Engine::start_read`]).
pub(crate) struct PendingRead {
    buf: wgpu::Buffer,
    bytes: u64,
    done: std::sync::mpsc::Receiver<std::result::Result<(), wgpu::BufferAsyncError>>,
}

/// An instance over `backends`, unless WGPU_BACKEND says otherwise.
fn instance(backends: wgpu::Backends) -> wgpu::Instance {
    let mut desc = wgpu::InstanceDescriptor::new_without_display_handle_from_env();
    desc.backends = wgpu::Backends::from_env().unwrap_or(backends);
    wgpu::Instance::new(desc)
}

/// Every adapter wgpu can see, in the order `--adapter N` counts them.
pub fn adapters() -> Vec<AdapterSummary> {
    let list = pollster::block_on(
        instance(wgpu::Backends::all()).enumerate_adapters(wgpu::Backends::all()),
    );
    list.into_iter()
        .enumerate()
        .map(|(index, a)| AdapterSummary {
            index,
            info: a.get_info(),
            limits: a.limits(),
            features: a.features(),
        })
        .collect()
}

impl Engine {
    /// Opens a device. `adapter` is an index from `wgpt info` or a case-insensitive part of an
    /// adapter's name; `None` takes the high-performance adapter.
    pub fn new(adapter: Option<&str>) -> Result<Arc<Engine>> {
        let adapter = match adapter.map(str::trim).filter(|s| !s.is_empty()) {
            None => {
                // Vulkan, Metal or DX12 first; OpenGL only when none of them has an adapter
                // (probing GL also spams stderr on headless Linux).
                let options = wgpu::RequestAdapterOptions {
                    power_preference: wgpu::PowerPreference::HighPerformance,
                    ..Default::default()
                };
                pollster::block_on(instance(wgpu::Backends::PRIMARY).request_adapter(&options))
                    .or_else(|_| {
                        pollster::block_on(
                            instance(wgpu::Backends::all()).request_adapter(&options),
                        )
                    })
                    .map_err(|e| Error::NoAdapter {
                        detail: format!(" ({e})"),
                    })?
            }
            Some(wanted) => {
                let all = pollster::block_on(
                    instance(wgpu::Backends::all()).enumerate_adapters(wgpu::Backends::all()),
                );
                if all.is_empty() {
                    return Err(Error::NoAdapter {
                        detail: String::new(),
                    });
                }
                let names: Vec<String> = all
                    .iter()
                    .enumerate()
                    .map(|(i, a)| {
                        format!("{i}: {} ({:?})", a.get_info().name, a.get_info().backend)
                    })
                    .collect();
                let pick = match wanted.parse::<usize>() {
                    Ok(i) => all.into_iter().nth(i),
                    Err(_) => {
                        let w = wanted.to_lowercase();
                        all.into_iter()
                            .find(|a| a.get_info().name.to_lowercase().contains(&w))
                    }
                };
                pick.ok_or_else(|| Error::AdapterNotFound {
                    wanted: wanted.to_string(),
                    available: names.join("; "),
                })?
            }
        };
        Self::from_adapter(&adapter)
    }

    /// Opens a device on `adapter`, asking for all the limits it offers (big buffers matter here).
    pub fn from_adapter(adapter: &wgpu::Adapter) -> Result<Arc<Engine>> {
        let info = adapter.get_info();
        let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
            label: Some("wgpt"),
            // Optional features the kernels can use where the adapter has them.
            required_features: adapter.features()
                & (wgpu::Features::SUBGROUP
                    | wgpu::Features::SHADER_F16
                    | wgpu::Features::TIMESTAMP_QUERY),
            required_limits: adapter.limits(),
            ..Default::default()
        }))
        .map_err(|e| Error::Device(format!("{} ({:?}): {e}", info.name, info.backend)))?;
        let error = Arc::new(Mutex::new(None));
        let sink = error.clone();
        check_limits(&device.limits(), &required_limits(), "wgpt's kernels")?;
        device.on_uncaptured_error(Arc::new(move |e: wgpu::Error| {
            log::debug!("wgpu: {e}");
            let mut slot = sink.lock().unwrap_or_else(|p| p.into_inner());
            slot.get_or_insert_with(|| e.to_string());
        }));
        let limits = device.limits();
        log::info!(
            "adapter: {} ({:?}, {:?}), max storage binding {} MiB",
            info.name,
            info.backend,
            info.device_type,
            limits.max_storage_buffer_binding_size >> 20
        );
        let lost = watch_loss(&device);
        Ok(Arc::new(Engine {
            device,
            queue,
            info,
            limits,
            error: Some(error),
            lost,
            registry: Default::default(),
        }))
    }

    /// Wraps a device the application created (and keeps using, e.g. for rendering). Its
    /// features and limits are checked against what the kernels need ([`required_limits`]);
    /// its uncaptured-error handler is left as the application set it: wgpt catches errors of
    /// its own allocations (model load, sessions) with error scopes instead.
    pub fn from_device(device: wgpu::Device, queue: wgpu::Queue) -> Result<Arc<Engine>> {
        let info = device.adapter_info();
        let limits = device.limits();
        check_limits(&limits, &required_limits(), "wgpt's kernels")?;
        log::info!(
            "application device: {} ({:?}, {:?}), max storage binding {} MiB",
            info.name,
            info.backend,
            info.device_type,
            limits.max_storage_buffer_binding_size >> 20
        );
        // The application's device-lost callback stays its own too: a lost device then shows
        // up as the failed polls and mappings it causes.
        let lost = Arc::new(Mutex::new(None));
        Ok(Arc::new(Engine {
            device,
            queue,
            info,
            limits,
            error: None,
            lost,
            registry: Default::default(),
        }))
    }

    /// Runs `f` inside validation and out-of-memory error scopes, so a failed allocation or a
    /// rejected pipeline comes back as an error ([`Error::OutOfMemory`], [`Error::Gpu`]) instead
    /// of reaching the device's handler. wgpt wraps every model load and session allocation in
    /// one; an application can wrap its own wgpt calls the same way.
    pub fn scoped<T>(&self, f: impl FnOnce() -> Result<T>) -> Result<T> {
        self.lost()?;
        let oom = self.device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
        let invalid = self.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let out = f();
        let invalid = pollster::block_on(invalid.pop());
        let oom = pollster::block_on(oom.pop());
        self.lost()?;
        if let Some(e) = oom {
            return Err(Error::OutOfMemory(e.to_string()));
        }
        if let Some(e) = invalid {
            return Err(Error::Gpu(e.to_string()));
        }
        out
    }

    /// `Err(DeviceLost)` once wgpu has reported the device lost.
    fn lost(&self) -> Result<()> {
        let lost = self.lost.lock().unwrap_or_else(|p| p.into_inner());
        match &*lost {
            Some(why) => Err(Error::DeviceLost(why.clone())),
            None => Ok(()),
        }
    }

    /// The largest buffer one binding may see: weights and activations are split below it.
    pub fn max_binding_bytes(&self) -> u64 {
        self.limits
            .max_storage_buffer_binding_size
            .min(self.limits.max_buffer_size)
    }

    /// Returns the first wgpu error raised since the last call, as the library's error
    /// ([`Error::DeviceLost`] once the device is lost).
    pub fn check(&self) -> Result<()> {
        self.lost()?;
        let Some(error) = &self.error else {
            return Ok(());
        };
        let mut slot = error.lock().unwrap_or_else(|p| p.into_inner());
        match slot.take() {
            Some(msg) => Err(Error::Gpu(msg)),
            None => Ok(()),
        }
    }

    /// Blocks until the queue is idle.
    pub fn wait(&self) -> Result<()> {
        self.device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| Error::Gpu(e.to_string()))?;
        self.check()
    }

    /// A zeroed storage buffer.
    #[cfg_attr(feature = "internals", visibility::make(pub), doc(hidden))]
    pub(crate) fn storage(&self, label: &str, bytes: u64) -> wgpu::Buffer {
        self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(label),
            size: bytes.max(4),
            usage: wgpu::BufferUsages::STORAGE
                | wgpu::BufferUsages::COPY_SRC
                | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        })
    }

    /// A storage buffer that can also be bound as a uniform: an activation gemv_texture reads
    /// through its 64 KiB uniform binding (so at least that big).
    #[cfg_attr(feature = "internals", visibility::make(pub), doc(hidden))]
    pub(crate) fn storage_uniform(&self, label: &str, bytes: u64) -> wgpu::Buffer {
        self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(label),
            size: bytes.max(4 * crate::gpu::kernels::wg::GEMV_UNIFORM_FLOATS as u64),
            usage: wgpu::BufferUsages::STORAGE
                | wgpu::BufferUsages::UNIFORM
                | wgpu::BufferUsages::COPY_SRC
                | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        })
    }

    /// The first 64 KiB of `buf` as gemv_texture's uniform input.
    #[cfg_attr(feature = "internals", visibility::make(pub), doc(hidden))]
    pub(crate) fn gemv_input(buf: &wgpu::Buffer) -> wgpu::BindingResource<'_> {
        wgpu::BindingResource::Buffer(wgpu::BufferBinding {
            buffer: buf,
            offset: 0,
            size: wgpu::BufferSize::new(4 * crate::gpu::kernels::wg::GEMV_UNIFORM_FLOATS as u64),
        })
    }

    /// A storage buffer holding `data`.
    #[cfg_attr(feature = "internals", visibility::make(pub), doc(hidden))]
    pub(crate) fn storage_init(&self, label: &str, data: &[u8]) -> wgpu::Buffer {
        self.device
            .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: Some(label),
                contents: data,
                usage: wgpu::BufferUsages::STORAGE
                    | wgpu::BufferUsages::COPY_SRC
                    | wgpu::BufferUsages::COPY_DST,
            })
    }

    /// A uniform buffer holding `value`.
    #[cfg_attr(feature = "internals", visibility::make(pub), doc(hidden))]
    pub(crate) fn uniform<T: bytemuck::Pod>(&self, label: &str, value: &T) -> wgpu::Buffer {
        self.device
            .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: Some(label),
                contents: bytemuck::bytes_of(value),
                usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
            })
    }

    /// A zero-filled uniform buffer of `bytes` (per-row settings written in place each step).
    #[cfg_attr(feature = "internals", visibility::make(pub), doc(hidden))]
    pub(crate) fn uniform_zeroed(&self, label: &str, bytes: u64) -> wgpu::Buffer {
        self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(label),
            size: bytes,
            usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        })
    }

    /// A (rows, cols) f32 matrix as an rgba32float texture: four values along a row per texel,
    /// usable as a storage texture (matmul_texture.wgsl). `cols % 4 == 0`.
    #[cfg_attr(feature = "internals", visibility::make(pub), doc(hidden))]
    pub(crate) fn texture(&self, label: &str, rows: usize, cols: usize) -> wgpu::Texture {
        self.texture_of(label, rows, cols / 4, wgpu::TextureFormat::Rgba32Float)
    }

    /// A (rows, cols) weight matrix stored as `dtype`, raw bits in an rgba32uint texture (four
    /// f32, eight f16 or sixteen int8 per texel; a q8 row ends in scales, four per texel, and
    /// q8 rows are padded to whole groups of four), transposed: weight row n is texture column
    /// n, so texel (n, t) is texel t of row n as [`encode`](crate::gpu::tensor::encode) lays it
    /// out. Lanes computing neighbouring outputs then fetch neighbouring texels: measured on
    /// lavapipe at GPT-2's shape, q8 decode 1.25x faster than with one weight row per texture
    /// row (f16 about the same). `dtype.row_bytes(cols) % 16 == 0`.
    #[cfg_attr(feature = "internals", visibility::make(pub), doc(hidden))]
    pub(crate) fn weight_texture(
        &self,
        label: &str,
        rows: usize,
        cols: usize,
        dtype: WeightDtype,
    ) -> wgpu::Texture {
        let texels = dtype.row_bytes(cols) / 16;
        let rows = dtype.stored_rows(rows);
        self.texture_of(label, texels, rows, wgpu::TextureFormat::Rgba32Uint)
    }

    fn texture_of(
        &self,
        label: &str,
        rows: usize,
        texels: usize,
        format: wgpu::TextureFormat,
    ) -> wgpu::Texture {
        self.device.create_texture(&wgpu::TextureDescriptor {
            label: Some(label),
            size: wgpu::Extent3d {
                width: texels as u32,
                height: rows as u32,
                depth_or_array_layers: 1,
            },
            mip_level_count: 1,
            sample_count: 1,
            dimension: wgpu::TextureDimension::D2,
            format,
            // COPY_SRC: Session::fork copies KV cache textures.
            usage: wgpu::TextureUsages::STORAGE_BINDING
                | wgpu::TextureUsages::COPY_SRC
                | wgpu::TextureUsages::COPY_DST,
            view_formats: &[],
        })
    }

    /// [`Engine::texture`] holding `data` (row-major, rows x cols).
    #[cfg_attr(feature = "internals", visibility::make(pub), doc(hidden))]
    #[cfg_attr(not(feature = "internals"), allow(dead_code))]
    pub(crate) fn texture_init(
        &self,
        label: &str,
        data: &[f32],
        rows: usize,
        cols: usize,
    ) -> wgpu::Texture {
        let tex = self.texture(label, rows, cols);
        self.write_texture_rows(&tex, 0, bytemuck::cast_slice(data));
        tex
    }

    /// [`Engine::weight_texture`] holding `data` (row-major, rows x cols), converted to `dtype`.
    #[cfg_attr(feature = "internals", visibility::make(pub), doc(hidden))]
    #[cfg_attr(not(feature = "internals"), allow(dead_code))]
    pub(crate) fn weight_texture_init(
        &self,
        label: &str,
        data: &[f32],
        rows: usize,
        cols: usize,
        dtype: WeightDtype,
    ) -> Result<wgpu::Texture> {
        let tex = self.weight_texture(label, rows, cols, dtype);
        let up = upload::Uploader::new(self);
        up.weight_rows(&tex, 0, &crate::gpu::tensor::encode(data, cols, dtype))?;
        up.finish()?;
        Ok(tex)
    }

    /// Writes whole rows of 16-byte texels, starting at row `row0`, from row-major bytes.
    #[cfg_attr(feature = "internals", visibility::make(pub), doc(hidden))]
    #[cfg_attr(not(feature = "internals"), allow(dead_code))]
    pub(crate) fn write_texture_rows(&self, tex: &wgpu::Texture, row0: u32, bytes: &[u8]) {
        let row_bytes = tex.width() * 16;
        let rows = bytes.len() as u32 / row_bytes;
        self.queue.write_texture(
            wgpu::TexelCopyTextureInfo {
                texture: tex,
                mip_level: 0,
                origin: wgpu::Origin3d {
                    x: 0,
                    y: row0,
                    z: 0,
                },
                aspect: wgpu::TextureAspect::All,
            },
            bytes,
            wgpu::TexelCopyBufferLayout {
                offset: 0,
                bytes_per_row: Some(row_bytes),
                rows_per_image: None,
            },
            wgpu::Extent3d {
                width: tex.width(),
                height: rows,
                depth_or_array_layers: 1,
            },
        );
    }

    pub(crate) fn readback(&self, label: &str, bytes: u64) -> wgpu::Buffer {
        self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(label),
            size: bytes.max(4),
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        })
    }

    /// Maps `buf` (a MAP_READ buffer), copies `bytes` out of it and unmaps it.
    pub(crate) fn read(&self, buf: &wgpu::Buffer, bytes: u64) -> Result<Vec<u8>> {
        let pending = self.start_read(buf, bytes);
        self.finish_read(&pending, true)?
            .ok_or_else(|| Error::Gpu("buffer map callback never ran".into()))
    }

    /// Starts mapping the first `bytes` of `buf` (a MAP_READ buffer) once the work submitted so
    /// far is done; [`Engine::finish_read`] collects it.
    pub(crate) fn start_read(&self, buf: &wgpu::Buffer, bytes: u64) -> PendingRead {
        let (tx, rx) = std::sync::mpsc::channel();
        buf.slice(..bytes).map_async(wgpu::MapMode::Read, move |r| {
            let _ = tx.send(r);
        });
        PendingRead {
            buf: buf.clone(),
            bytes,
            done: rx,
        }
    }

    /// The bytes of a read started by [`Engine::start_read`], unmapping the buffer: `block`
    /// waits for the GPU; otherwise the device is polled once and `None` means not yet.
    pub(crate) fn finish_read(&self, r: &PendingRead, block: bool) -> Result<Option<Vec<u8>>> {
        if block {
            self.wait()?;
        } else {
            self.device
                .poll(wgpu::PollType::Poll)
                .map_err(|e| Error::Gpu(e.to_string()))?;
            self.check()?;
        }
        // After a wait the callback has run or is running (maybe on another thread polling the
        // same device): receive blocking.
        let received = match block {
            true => r.done.recv().map_err(|_| TryRecvError::Disconnected),
            false => r.done.try_recv(),
        };
        match received {
            Err(TryRecvError::Empty) => Ok(None),
            Err(TryRecvError::Disconnected) => {
                Err(Error::Gpu("buffer map callback was dropped".into()))
            }
            Ok(mapped) => {
                mapped.map_err(|e| Error::Gpu(format!("cannot map readback buffer: {e}")))?;
                let out = r
                    .buf
                    .slice(..r.bytes)
                    .get_mapped_range()
                    .map_err(|e| Error::Gpu(format!("cannot read mapped buffer: {e:?}")))?
                    .to_vec();
                r.buf.unmap();
                Ok(Some(out))
            }
        }
    }

    /// Reads a whole storage buffer back (tests and debugging; the forward pass never does this).
    #[cfg_attr(feature = "internals", visibility::make(pub), doc(hidden))]
    #[cfg_attr(not(feature = "internals"), allow(dead_code))]
    pub(crate) fn download_f32(&self, buf: &wgpu::Buffer) -> Result<Vec<f32>> {
        let size = buf.size();
        let staging = self.readback("download", size);
        let mut enc = self.device.create_command_encoder(&Default::default());
        enc.copy_buffer_to_buffer(buf, 0, &staging, 0, size);
        self.queue.submit([enc.finish()]);
        let bytes = self.read(&staging, size)?;
        Ok(bytemuck::pod_collect_to_vec(&bytes))
    }
}
