//! Any bytes as an ext4 file system: read the whole tree.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = hearth_builder::format::ext4::read::read_tree(&mut std::io::Cursor::new(data), 0, 0);
});
