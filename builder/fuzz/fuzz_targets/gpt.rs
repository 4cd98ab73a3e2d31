//! Any bytes as a disk: read its GPT; a table that reads must render back.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let len = data.len() as u64;
    if let Ok(gpt) = hearth_builder::format::gpt::Gpt::read(&mut std::io::Cursor::new(data), len) {
        let sectors = (len / 512).max(gpt.first_usable() + gpt.array_sectors() + 2);
        let _ = gpt.render(sectors);
    }
});
