//! `hearth store`: add, verify (a flipped byte is named), export/import bundles
//! offline (verified before anything lands), gc.

mod common;

use std::os::unix::fs::PermissionsExt;

use common::{Env, Item, sha256_hex, write_recipe};
use hearth_testsupport::{Behavior, Server, pseudo_random};

fn add(env: &Env, name: &str, bytes: &[u8]) -> String {
    let f = env.path(name);
    std::fs::write(&f, bytes).unwrap();
    env.run(&["store", "add", f.to_str().unwrap(), "--sha256", &sha256_hex(bytes)]).ok().stdout.trim().to_owned()
}

fn flip_byte(path: &std::path::Path, at: usize) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let mut b = std::fs::read(path).unwrap();
    b[at] ^= 1;
    std::fs::write(path, b).unwrap();
}

#[test]
fn add_is_verified_and_read_only() {
    let env = Env::new();
    let bytes = pseudo_random(10_000, 1);
    let entry = add(&env, "kubeadm", &bytes);
    assert!(entry.ends_with("-kubeadm"), "{entry}");
    let file = std::path::Path::new(&entry).join("kubeadm");
    assert_eq!(std::fs::read(&file).unwrap(), bytes);
    assert_eq!(std::fs::metadata(&file).unwrap().permissions().mode() & 0o777, 0o444);
    assert_eq!(std::fs::metadata(&entry).unwrap().permissions().mode() & 0o777, 0o555);
    // Same bytes under another name: the same entry.
    let again = add(&env, "other-name", &bytes);
    assert_eq!(again, entry);

    let f = env.path("wrong");
    std::fs::write(&f, b"not it").unwrap();
    let r = env.run(&["store", "add", f.to_str().unwrap(), "--sha256", &sha256_hex(b"something else")]).fails();
    r.stderr_has(&format!("expected sha256 {}", sha256_hex(b"something else")));
    r.stderr_has(&format!("found {}", sha256_hex(b"not it")));
    assert_eq!(env.entries().len(), 1);
    let r = env.run(&["store", "add", f.to_str().unwrap(), "--sha256", "1234"]).fails();
    r.stderr_has("a sha256 has 64 hex digits");
}

#[test]
fn a_flipped_byte_is_named_by_verify() {
    let env = Env::new();
    let good = add(&env, "good.bin", &pseudo_random(5000, 2));
    let bad = add(&env, "bad.bin", &pseudo_random(5000, 3));
    env.run(&["store", "verify"]).ok().stdout_has("2 entries verified");
    flip_byte(&std::path::Path::new(&bad).join("bad.bin"), 1234);
    let r = env.run(&["store", "verify"]).fails();
    let bad_name = std::path::Path::new(&bad).file_name().unwrap().to_str().unwrap();
    r.stderr_has("1 of 2 entries failed verification");
    r.stderr_has(&format!("{bad_name}: `bad.bin` is corrupt"));
    assert!(!r.stderr.contains(std::path::Path::new(&good).file_name().unwrap().to_str().unwrap()));
    // Checking only the good one passes; --json reports the problem too.
    env.run(&["store", "verify", &good]).ok();
    let r = env.run(&["store", "verify", "--json"]).fails();
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(v["problems"][0]["entry"], bad_name);
}

#[test]
fn export_then_offline_import_into_an_empty_store() {
    let env = Env::new();
    let srv = Server::start();
    let base = pseudo_random(200_000, 4);
    let deb = pseudo_random(3000, 5);
    srv.serve("/b.img", base.clone(), Behavior::Normal);
    srv.serve("/d.deb", deb.clone(), Behavior::Normal);
    let recipe = env.path("r.toml");
    write_recipe(
        &recipe,
        &Item::new("base", "b.img", &srv.url("/b.img"), &base),
        &[Item::new("debs", "d", &srv.url("/d.deb"), &deb)],
    );
    env.run(&["fetch", recipe.to_str().unwrap()]).ok();
    let bundle = env.path("inputs.bundle");
    env.run(&["store", "export", "-o", bundle.to_str().unwrap()]).ok().stdout_has("exported 2 entries");
    // Deterministic: a second export is byte-identical.
    let bundle2 = env.path("inputs2.bundle");
    env.run(&["store", "export", "-o", bundle2.to_str().unwrap()]).ok();
    assert_eq!(std::fs::read(&bundle).unwrap(), std::fs::read(&bundle2).unwrap());

    let mut other = Env::new();
    other.env("HEARTH_MIRRORS", "http://127.0.0.1/=file:///nonexistent/");
    other.run(&["--offline", "store", "import", bundle.to_str().unwrap()]).ok().stdout_has("imported 2 entries");
    other.run(&["store", "verify"]).ok().stdout_has("2 entries verified");
    assert_eq!(other.entries(), env.entries());
    // With the inputs imported, an offline fetch of the recipe needs nothing.
    let requests = srv.requests("/b.img");
    let r = other.run(&["--offline", "fetch", recipe.to_str().unwrap()]).ok();
    r.stdout_has("nothing to do");
    assert_eq!(srv.requests("/b.img"), requests);
    // Importing again changes nothing.
    other.run(&["store", "import", bundle.to_str().unwrap()]).ok().stdout_has("imported 0 entries (2 already present)");
}

#[test]
fn a_tampered_bundle_imports_nothing() {
    let env = Env::new();
    add(&env, "one.bin", &pseudo_random(4000, 6));
    add(&env, "two.bin", &pseudo_random(4000, 7));
    let names = env.entries();
    let bundle = env.path("b.bundle");
    env.run(&["store", "export", "-o", bundle.to_str().unwrap(), &names[0], &names[1]]).ok();
    // Flip a byte inside the data of the last member (an output file).
    let mut bytes = std::fs::read(&bundle).unwrap();
    let mut archive = tar::Archive::new(&bytes[..]);
    let last = archive.entries().unwrap().map(|e| e.unwrap().raw_file_position()).last().unwrap();
    bytes[last as usize + 100] ^= 1;
    let tampered = env.path("t.bundle");
    std::fs::write(&tampered, &bytes).unwrap();
    let other = Env::new();
    let r = other.run(&["store", "import", tampered.to_str().unwrap()]).fails();
    r.stderr_has("bundle failed verification, nothing was imported");
    assert!(other.entries().is_empty(), "{:?}", other.entries());
    // A plain tar that is not a bundle.
    let plain = other.path("plain.tar");
    std::fs::write(&plain, raw_tar(&[("hello.txt", b"abc")])).unwrap();
    other.run(&["store", "import", plain.to_str().unwrap()]).fails().stderr_has("not a hearth bundle");
    // A bundle whose member climbs out of its entry.
    let hostile = other.path("hostile.bundle");
    let escape = format!("{}/../../escape", names[0]);
    let index = format!("hearth bundle 1\n{}\n", names[0]);
    std::fs::write(&hostile, raw_tar(&[("hearth-bundle", index.as_bytes()), (&escape, b"pwned")])).unwrap();
    let r = other.run(&["store", "import", hostile.to_str().unwrap()]).fails();
    r.stderr_has("is not inside an entry (rejected)");
    assert!(!other.dir.path().join("escape").exists() && !other.store.join("escape").exists());
    assert!(other.entries().is_empty());
}

/// A tar with the given member names written verbatim (even hostile ones, which
/// the tar crate's own setters refuse).
fn raw_tar(members: &[(&str, &[u8])]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (name, data) in members {
        let mut h = tar::Header::new_old();
        h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::Regular);
        h.set_cksum();
        b.append(&h, *data).unwrap();
    }
    b.into_inner().unwrap()
}

#[test]
fn gc_keeps_what_roots_reach() {
    let env = Env::new();
    let srv = Server::start();
    let base = pseudo_random(1000, 8);
    srv.serve("/b.img", base.clone(), Behavior::Normal);
    let recipe = env.path("r.toml");
    write_recipe(&recipe, &Item::new("base", "b.img", &srv.url("/b.img"), &base), &[]);
    env.run(&["fetch", recipe.to_str().unwrap()]).ok();
    let loose = add(&env, "loose.bin", b"loose");
    let loose_name = std::path::Path::new(&loose).file_name().unwrap().to_str().unwrap().to_owned();
    env.run(&["store", "gc", "--dry-run"]).ok().stdout_has(&format!("would remove {loose_name}"));
    assert_eq!(env.entries().len(), 2);
    env.run(&["store", "gc"]).ok().stdout_has(&format!("removed {loose_name}"));
    assert_eq!(env.entries().len(), 1);
    env.run(&["store", "gc"]).ok().stdout_has("nothing to collect");
    let r = env.run(&["store", "ls", "--json"]).ok();
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(v[0]["name"], "b.img");
}
