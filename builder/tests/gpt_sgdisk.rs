//! The GPT code against `sgdisk`: it reads what sgdisk writes (the Ubuntu cloud
//! image's shape: BIOS boot, ESP, /boot, root last), and what it writes for a
//! larger disk with the root grown passes `sgdisk -v` with every GUID kept.

use std::fs::File;
use std::process::Command;

use hearth_builder::format::gpt::{Gpt, SECTOR, guid_string};

fn sgdisk(args: &[&str]) -> String {
    let out = Command::new("sgdisk").args(args).output().expect("sgdisk");
    assert!(out.status.success(), "sgdisk {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn reads_and_regrows_an_ubuntu_shaped_table() {
    if !hearth_testsupport::require_tool("sgdisk") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("disk.raw");
    let sectors_before = 3_670_016u64; // 1.75 GiB
    File::create(&img).unwrap().set_len(sectors_before * SECTOR).unwrap();
    let p = img.to_str().unwrap();
    sgdisk(&[
        "-n",
        "14:2048:10239",
        "-t",
        "14:EF02",
        "-n",
        "15:10240:227327",
        "-t",
        "15:EF00",
        "-n",
        "16:227328:2099199",
        "-t",
        "16:EA00",
        "-n",
        "1:2099200:0",
        "-t",
        "1:8300",
        "-c",
        "1:cloudimg-rootfs",
        p,
    ]);
    let gpt = Gpt::read(&mut File::open(&img).unwrap(), sectors_before * SECTOR).unwrap();
    let numbers: Vec<u32> = gpt.partitions.iter().map(|p| p.number).collect();
    assert_eq!(numbers, vec![1, 14, 15, 16]);
    let root = gpt.partition(1).unwrap().clone();
    assert_eq!(root.name_string(), "cloudimg-rootfs");
    let info = sgdisk(&["-i", "1", p]);
    assert!(info.contains(&format!("Partition unique GUID: {}", guid_string(&root.part_guid))), "{info}");

    // A bigger disk; the root partition grows to fill it.
    let sectors_after = sectors_before * 2;
    let mut grown = gpt.clone();
    let last_usable = grown.last_usable(sectors_after);
    grown.partitions.iter_mut().find(|p| p.number == 1).unwrap().last_lba = last_usable;
    let r = grown.render(sectors_after).unwrap();
    let img2 = dir.path().join("grown.raw");
    let f = File::create(&img2).unwrap();
    f.set_len(sectors_after * SECTOR).unwrap();
    use std::os::unix::fs::FileExt;
    f.write_all_at(&r.primary, 0).unwrap();
    f.write_all_at(&r.backup, r.backup_lba * SECTOR).unwrap();
    let p2 = img2.to_str().unwrap();
    let verify = sgdisk(&["-v", p2]);
    assert!(verify.contains("No problems found"), "{verify}");
    let back = Gpt::read(&mut File::open(&img2).unwrap(), sectors_after * SECTOR).unwrap();
    assert_eq!(back.disk_guid, gpt.disk_guid);
    for (a, b) in back.partitions.iter().zip(&gpt.partitions) {
        assert_eq!(
            (a.number, a.part_guid, a.type_guid, a.first_lba),
            (b.number, b.part_guid, b.type_guid, b.first_lba)
        );
    }
    let info = sgdisk(&["-i", "1", p2]);
    assert!(info.contains(&format!("Last sector: {last_usable} ")), "{info}");
    // Rendering is a pure function of the table and the size.
    assert_eq!(grown.render(sectors_after).unwrap().primary, r.primary);
}
