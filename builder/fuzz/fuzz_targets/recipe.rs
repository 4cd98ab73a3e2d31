//! Any text as a recipe or a lock.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let _ = hearth_builder::recipe::parse_recipe(&text);
    let _ = hearth_builder::recipe::parse_pins(&text);
});
