//! The ext4 reader: against what mke2fs makes from a directory (64bit, flex_bg,
//! metadata_csum, as cloud images are made), and against the writer (a tree
//! written then read is the same tree).

use std::collections::BTreeMap;
use std::fs::File;
use std::os::unix::fs::{FileExt, MetadataExt, PermissionsExt};
use std::process::Command;

use hearth_builder::format::ext4::read::read_tree;
use hearth_builder::format::ext4::write::{Options, plan, write};
use hearth_builder::tree::{Data, Kind, Meta, Node, Piece, Sink, Sources, Tree};

struct FileSink(File);
impl Sink for FileSink {
    fn write_at(&mut self, offset: u64, data: &[u8]) -> std::io::Result<()> {
        self.0.write_all_at(data, offset)
    }
}

fn content(data: &Data, src: &File) -> Vec<u8> {
    let mut out = vec![0u8; data.size as usize];
    for (at, piece) in &data.pieces {
        match piece {
            Piece::Inline(b) => out[*at as usize..*at as usize + b.len()].copy_from_slice(b),
            Piece::External { offset, len, .. } => {
                src.read_exact_at(&mut out[*at as usize..(*at + len) as usize], *offset).unwrap()
            }
        }
    }
    out
}

/// Every path with a description of what is there.
fn flatten(tree: &Tree, src: &File) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut first_path: BTreeMap<usize, String> = BTreeMap::new();
    for (path, id) in tree.walk_sorted() {
        let p = String::from_utf8_lossy(&path).into_owned();
        let n = tree.node(id);
        let m = &n.meta;
        let what = match &n.kind {
            Kind::Dir(_) => "dir".to_owned(),
            Kind::File(d) => format!("file {:?}", String::from_utf8_lossy(&content(d, src))),
            Kind::Symlink(t) => format!("link {}", String::from_utf8_lossy(t)),
            Kind::CharDev { major, minor } => format!("chr {major}:{minor}"),
            Kind::BlockDev { major, minor } => format!("blk {major}:{minor}"),
            Kind::Fifo => "fifo".into(),
            Kind::Socket => "sock".into(),
        };
        let link = match first_path.get(&id) {
            Some(f) if !matches!(n.kind, Kind::Dir(_)) => format!(" =link {f}"),
            _ => String::new(),
        };
        first_path.entry(id).or_insert_with(|| p.clone());
        out.insert(p, format!("{what} {:o} {}:{} t{} x{:?}{link}", m.perm, m.uid, m.gid, m.mtime, m.xattrs));
    }
    out
}

#[test]
fn reads_what_mke2fs_makes() {
    if !hearth_testsupport::require_tool("mke2fs") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    std::fs::create_dir_all(root.join("usr/bin")).unwrap();
    std::fs::create_dir_all(root.join("etc/deep/er/still")).unwrap();
    std::fs::write(root.join("etc/hostname"), "base\n").unwrap();
    std::fs::write(root.join("etc/deep/er/still/file"), "deep\n").unwrap();
    let big: Vec<u8> = (0..3_000_000u32).map(|i| (i.wrapping_mul(2654435761) >> 24) as u8).collect();
    std::fs::write(root.join("usr/bin/tool"), &big).unwrap();
    std::fs::set_permissions(root.join("usr/bin/tool"), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::os::unix::fs::symlink("usr/bin", root.join("bin")).unwrap();
    std::os::unix::fs::symlink("/".to_owned() + &"x".repeat(100), root.join("etc/long")).unwrap();
    std::fs::hard_link(root.join("etc/hostname"), root.join("etc/hostname2")).unwrap();
    for i in 0..300 {
        std::fs::write(root.join(format!("etc/f{i:03}")), format!("{i}")).unwrap();
    }
    let img = dir.path().join("base.ext4");
    let st = Command::new("mke2fs")
        .args(["-q", "-F", "-t", "ext4", "-O", "64bit,metadata_csum,flex_bg", "-L", "cloudimg-rootfs"])
        .args(["-U", "01234567-89ab-cdef-0123-456789abcdef", "-E", "hash_seed=11111111-2222-3333-4444-555555555555"])
        .arg("-d")
        .arg(&root)
        .arg(&img)
        .arg("64M")
        .status()
        .unwrap();
    assert!(st.success());
    let f = File::open(&img).unwrap();
    let (tree, info) = read_tree(&mut File::open(&img).unwrap(), 0, 0).unwrap();
    assert_eq!(info.label, b"cloudimg-rootfs");
    assert_eq!(info.uuid[..4], [0x01, 0x23, 0x45, 0x67]);
    assert_eq!(info.hash_seed[..4], [0x11, 0x11, 0x11, 0x11]);
    let flat = flatten(&tree, &f);
    let tool = tree.lookup(b"/usr/bin/tool", false).unwrap();
    match &tree.node(tool).kind {
        Kind::File(d) => assert!(content(d, &f) == big),
        other => panic!("{other:?}"),
    }
    assert!(flat["/etc/hostname"].starts_with("file \"base\\n\" 644"), "{}", flat["/etc/hostname"]);
    assert!(flat["/etc/hostname2"].contains("=link /etc/hostname"), "{}", flat["/etc/hostname2"]);
    assert!(flat["/bin"].starts_with("link usr/bin 777"), "{}", flat["/bin"]);
    assert!(flat["/etc/long"].starts_with(&format!("link /{}", "x".repeat(100))));
    assert!(flat["/etc/deep/er/still/file"].starts_with("file \"deep\\n\""));
    assert_eq!(flat.keys().filter(|k| k.starts_with("/etc/f")).count(), 300);
    let uid = std::fs::metadata(root.join("etc/hostname")).unwrap().uid();
    assert!(flat["/etc/hostname"].contains(&format!(" {uid}:")), "{}", flat["/etc/hostname"]);
}

#[test]
fn written_then_read_is_the_same_tree() {
    let mut t = Tree::new(Meta { perm: 0o755, uid: 0, gid: 0, mtime: 1000, xattrs: BTreeMap::new() });
    let m = |perm, uid, gid| Meta { perm, uid, gid, mtime: 1000, xattrs: BTreeMap::new() };
    t.mkdir_p(b"/a/b", &m(0o755, 0, 0)).unwrap();
    t.insert(b"/lost+found", Node { kind: Kind::Dir(BTreeMap::new()), meta: m(0o700, 0, 0) }).unwrap();
    let mut cap = m(0o755, 0, 0);
    cap.xattrs
        .insert(b"security.capability".to_vec(), vec![1, 0, 0, 2, 0, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    cap.xattrs.insert(b"user.note".to_vec(), b"v".to_vec());
    t.insert(b"/a/b/ping", Node { kind: Kind::File(Data::inline(b"ELF".to_vec())), meta: cap }).unwrap();
    t.insert(b"/a/empty", Node { kind: Kind::File(Data::default()), meta: m(0o600, 5, 6) }).unwrap();
    t.insert(b"/a/dev", Node { kind: Kind::CharDev { major: 4, minor: 64 }, meta: m(0o620, 0, 5) }).unwrap();
    t.insert(b"/a/bdev", Node { kind: Kind::BlockDev { major: 259, minor: 1000 }, meta: m(0o660, 0, 6) }).unwrap();
    t.insert(b"/a/pipe", Node { kind: Kind::Fifo, meta: m(0o644, 0, 0) }).unwrap();
    t.insert(b"/a/link", Node { kind: Kind::Symlink(b"b/ping".to_vec()), meta: m(0o777, 0, 0) }).unwrap();
    t.hardlink(b"/hard", b"/a/b/ping").unwrap();
    let big: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    t.insert(b"/a/big", Node { kind: Kind::File(Data::inline(big)), meta: m(0o644, 1000, 1000) }).unwrap();

    let opts = Options { label: b"rt".to_vec(), uuid: [9; 16], hash_seed: [8; 16], epoch: 2000, headroom: 1 << 20 };
    let p = plan(&t, &opts).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("rt.ext4");
    let f = File::create(&img).unwrap();
    f.set_len(p.bytes()).unwrap();
    struct NoSources;
    impl Sources for NoSources {
        fn read_at(&mut self, _: u32, _: u64, _: &mut [u8]) -> std::io::Result<()> {
            unreachable!("all content is inline")
        }
    }
    write(&p, &mut NoSources, &mut FileSink(f), &img).unwrap();
    let f = File::open(&img).unwrap();
    let (back, info) = read_tree(&mut File::open(&img).unwrap(), 0, 0).unwrap();
    assert_eq!((info.label.as_slice(), info.uuid, info.hash_seed), (&b"rt"[..], [9; 16], [8; 16]));
    let none = File::open(&img).unwrap();
    assert_eq!(flatten(&back, &f), flatten(&t, &none));
}
