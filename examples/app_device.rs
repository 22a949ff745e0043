//! An application that already uses wgpu (for rendering, say) creates its own device and hands
//! it to wgpt; both keep using it.
//!
//!     cargo run --release --example app_device

use std::path::Path;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // The app's own setup, as in any wgpu program.
    let instance =
        wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env());
    let adapter = pollster::block_on(instance.request_adapter(&Default::default()))?;
    println!("adapter: {}", adapter.get_info().name);
    let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
        label: Some("app"),
        // What wgpt's kernels need; asking for the adapter's buffer limits lets big weight
        // matrices sit in fewer chunks.
        required_limits: wgpu::Limits {
            max_storage_buffer_binding_size: adapter.limits().max_storage_buffer_binding_size,
            max_buffer_size: adapter.limits().max_buffer_size,
            ..wgpt::gpu::required_limits().using_resolution(adapter.limits())
        },
        ..Default::default()
    }))?;

    // wgpt shares the device (wgpu handles are reference-counted clones).
    let engine = wgpt::Engine::from_device(device.clone(), queue.clone())?;
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/default");
    let model = wgpt::Model::load(engine, &dir, &Default::default())?;
    let tokenizer = wgpt::Tokenizer::from_file(&dir.join("tokenizer.json"))?;
    let mut session = wgpt::Session::new(&model)?;
    let opts = wgpt::GenerateOptions {
        max_tokens: 24,
        ..Default::default()
    };
    let ids = tokenizer.encode("fn main() {")?;
    let out = wgpt::generate_ids(&mut session, Some(&tokenizer), &ids, &opts, |_| {})?;
    println!("fn main() {{{}", out.text);

    // The app goes on with its own work on the same device.
    let buf = device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("app buffer"),
        size: 256,
        usage: wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });
    queue.write_buffer(&buf, 0, &[0u8; 256]);
    queue.submit([]);
    Ok(())
}
