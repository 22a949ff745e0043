// Weight storage formats (src/gpu/format.rs): each has a code, a pipeline's WEIGHT_FORMAT
// override constant picks one, and each format's decoder (format_<name>.wgsl, prepended after
// this file) holds its layout arithmetic and unpacking. Kernels that read weights branch on
// WEIGHT_FORMAT, which the driver compiles away: one format's code per pipeline.

const FORMAT_F32: u32 = 0u;
const FORMAT_F16: u32 = 1u;
const FORMAT_Q8: u32 = 2u;
const FORMAT_Q4: u32 = 3u;
const FORMAT_Q5: u32 = 4u;
const FORMAT_Q6: u32 = 5u;
const FORMAT_Q4H: u32 = 6u;
const FORMAT_Q5H: u32 = 7u;

override WEIGHT_FORMAT: u32 = FORMAT_F32;
