//! Any bytes as a qcow2 image: open and read the whole virtual disk (bounded):
//! errors are fine, panics and runaway allocations are not.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(mut q) = hearth_builder::format::qcow2::Qcow2::open(std::io::Cursor::new(data)) {
        let len = q.size().min(1 << 20) as usize;
        let mut buf = vec![0u8; len];
        let _ = q.read_at(0, &mut buf);
    }
});
