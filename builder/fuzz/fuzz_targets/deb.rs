//! Any bytes as a .deb: the ar container, its control stanzas and relations.
#![no_main]
use libfuzzer_sys::fuzz_target;
use hearth_builder::format::deb;

fuzz_target!(|data: &[u8]| {
    let _ = deb::open_deb(data);
    let text = String::from_utf8_lossy(data);
    if let Ok(stanzas) = deb::parse_stanzas(&text) {
        for s in stanzas {
            if let Some(d) = s.get("Depends") {
                let _ = deb::parse_relations(d);
            }
        }
    }
    let mut halves = text.splitn(2, '\n');
    if let (Some(a), Some(b)) = (halves.next(), halves.next()) {
        let _ = deb::compare_versions(a, b);
    }
});
