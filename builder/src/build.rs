//! `hearth build`: a recipe and its fetched inputs into one derived store entry
//! holding `disk.qcow2`, `vmlinuz`, `initrd.img` and `manifest.json`.
//!
//! Phases:
//! 1. key: the canonical hash of the recipe, its inputs' entries and the files it
//!    takes from `images/`; an existing entry ends the build here;
//! 2. base: decode the base disk to a sparse raw file, read its GPT, find the
//!    root partition (by label or number) and read its ext4 into a tree;
//! 3. layers: debs (dependencies checked), archives, files, OCI archives, scrub;
//! 4. root file system: a new ext4 with the base's label, UUID and hash seed;
//! 5. disk: the other partitions byte for byte, the root resized, a new GPT;
//! 6. outputs: kernel and initrd from the BOOT file system (or /boot), and the
//!    disk as zstd-compressed qcow2 by hearth's own writer (zlib: `qemu-img`).
//!
//! Nothing here needs root, a VM or the network.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::cmd::{self, CmdError};
use crate::digest::Sha256;
use crate::files::{self, FileError, PathReader};
use crate::fill::Filled;
use crate::format::ext4::{read as ext4r, write as ext4w};
use crate::format::gpt::{self, Gpt, SECTOR};
use crate::format::qcow2::{self, Qcow2, Qcow2Error};
use crate::layers::{self, LayerError, Spill, Unpack};
use crate::recipe::{BaseFormat, Compression, InputKind, LoadedRecipe, RootSelector};
use crate::report::Reporter;
use crate::store::{self, Claim, EntryKey, OutputRecord, Outputs, Store, StoreError, StorePath};
use crate::tree::{Data, Kind, Meta, Node, Sink, Sources, Tree};

/// Version of the build pipeline; part of every image's key. Bump it whenever
/// the same inputs would give different bytes.
pub const BUILDER_FORMAT: u32 = 1;
/// Source number of the base disk in the tree.
const DISK_SOURCE: u32 = 0;

/// Errors of building.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The base disk.
    #[error("reading the base image `{}`", path.display())]
    Base {
        /// The base file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: Qcow2Error,
    },
    /// The partition table.
    #[error("partition table of the base image")]
    Gpt(#[from] gpt::GptError),
    /// No root partition found.
    #[error("no root partition {0} in the base image")]
    NoRoot(String),
    /// The root file system.
    #[error("reading the root file system of the base image")]
    Ext4Read(#[from] ext4r::ReadError),
    /// Writing the new root file system.
    #[error("writing the root file system")]
    Ext4Write(#[from] ext4w::Ext4Error),
    /// A layer.
    #[error("applying layers")]
    Layer(#[from] LayerError),
    /// The disk does not fit.
    #[error("{0}")]
    Size(String),
    /// The base has no kernel or initrd where the build looks.
    #[error("the base has no `{0}` to boot from")]
    NoKernel(String),
    /// An input that was not fetched.
    #[error("input `{0}` is not in the store (run `hearth fetch` first)")]
    MissingInput(String),
    /// The image has not been built into this store.
    #[error("the image of `{recipe}` is not in the store ({why})")]
    NotBuilt {
        /// The recipe file.
        recipe: String,
        /// What is missing.
        why: String,
    },
    /// A helper program.
    #[error(transparent)]
    Cmd(#[from] CmdError),
    /// The store.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A file operation failed.
    #[error(transparent)]
    File(#[from] FileError),
}

/// What a build produced.
#[derive(Debug)]
pub struct Built {
    /// The image entry.
    pub path: StorePath,
    /// False when it was already in the store.
    pub built: bool,
}

/// The canonical description of everything that goes into an image; its
/// sha256 is the image's key.
pub fn key_document(loaded: &LoadedRecipe, inputs: &[Filled]) -> Result<serde_json::Value, BuildError> {
    // Plain structs with string keys: serialising cannot fail.
    let recipe = serde_json::to_value(&loaded.recipe).expect("a recipe serialises");
    let pins: BTreeMap<String, String> = inputs.iter().map(|f| (f.input.id.clone(), f.path.to_string())).collect();
    let dir = loaded.path.parent().unwrap_or(Path::new("."));
    let mut sources = BTreeMap::new();
    for f in &loaded.recipe.files {
        if let Some(src) = &f.source {
            let p = dir.join(&src.0);
            let bytes = fs::read(&p).map_err(FileError::at("reading", &p))?;
            sources.insert(src.0.clone(), Sha256::of(&bytes).hex());
        }
    }
    Ok(serde_json::json!({ "builder": BUILDER_FORMAT, "recipe": recipe, "inputs": pins, "sources": sources }))
}

/// The store key of the image.
pub fn image_key(loaded: &LoadedRecipe, inputs: &[Filled]) -> Result<EntryKey, BuildError> {
    let doc = key_document(loaded, inputs)?;
    Ok(EntryKey::Derived(Sha256::of(doc.to_string().as_bytes())))
}

/// Finds the image a recipe describes without the network and without
/// building: every input is looked up by its pin, then the image by its key.
pub fn find_image(store: &Store, loaded: &LoadedRecipe) -> Result<StorePath, BuildError> {
    find_built(store, loaded).map(|(image, _)| image)
}

/// [`find_image`], with the inputs it found (for what launch takes from them:
/// the platform manifests).
pub fn find_built(store: &Store, loaded: &LoadedRecipe) -> Result<(StorePath, Vec<Filled>), BuildError> {
    let recipe = loaded.path.display().to_string();
    let not_built = |why: String| BuildError::NotBuilt { recipe: recipe.clone(), why };
    let mut filled = Vec::new();
    for input in loaded.inputs() {
        let pin = input.pin.ok_or_else(|| not_built(format!("`{}` is not pinned", input.id)))?;
        let key = match &input.kind {
            InputKind::Image { platform, .. } => EntryKey::Oci { digest: pin, platform: platform.clone() },
            InputKind::Base { .. }
            | InputKind::Deb { .. }
            | InputKind::Archive { .. }
            | InputKind::File { .. }
            | InputKind::Manifest { .. } => EntryKey::Fixed(pin),
        };
        let path = store.lookup(&key)?.ok_or_else(|| not_built(format!("input `{}` is missing", input.id)))?;
        filled.push(Filled { input, path, downloaded: false });
    }
    let image = store
        .lookup(&image_key(loaded, &filled)?)?
        .ok_or_else(|| not_built("its inputs are there, the image is not".into()))?;
    Ok((image, filled))
}

/// Builds the image (or finds it in the store).
pub fn build(
    store: &Store,
    loaded: &LoadedRecipe,
    inputs: &[Filled],
    reporter: &dyn Reporter,
) -> Result<Built, BuildError> {
    let key = image_key(loaded, inputs)?;
    let name = loaded.recipe.name.get_ref().clone();
    let built = match store
        .claim(&key, &name, || reporter.note(&format!("waiting for another hearth process building `{name}`")))?
    {
        Claim::Present(path) => Built { path, built: false },
        Claim::Vacant(pending) => {
            let work = WorkDir::new(store, pending.path().hash())?;
            let outputs = build_outputs(store, loaded, inputs, pending.dir(), &work.0, reporter)?;
            Built { path: pending.commit(outputs)?, built: true }
        }
    };
    store.add_root(&format!("build-{name}"), std::slice::from_ref(&built.path))?;
    Ok(built)
}

/// Rebuilds into a temporary directory and compares every output with the
/// stored entry. Returns the names of the outputs that differ.
pub fn check(
    store: &Store,
    loaded: &LoadedRecipe,
    inputs: &[Filled],
    reporter: &dyn Reporter,
) -> Result<(StorePath, Vec<String>), BuildError> {
    let key = image_key(loaded, inputs)?;
    let path = store.lookup(&key)?.ok_or_else(|| BuildError::NotBuilt {
        recipe: loaded.path.display().to_string(),
        why: "it has not been built yet: run `hearth build` first".into(),
    })?;
    let stored = store.manifest(&path)?;
    let work = WorkDir::new(store, &format!("check-{}", path.hash()))?;
    let out = work.0.join("out");
    fs::create_dir_all(&out).map_err(FileError::at("creating", &out))?;
    let fresh = build_outputs(store, loaded, inputs, &out, &work.0, reporter)?;
    let mut differ = Vec::new();
    for (name, rec) in &stored.outputs {
        match fresh.files.get(name) {
            Some(f) if f == rec => {}
            Some(f) => differ.push(format!("{name}: stored sha256 {}, rebuilt {}", rec.sha256, f.sha256)),
            None => differ.push(format!("{name}: not produced by the rebuild")),
        }
    }
    Ok((path, differ))
}

/// A scratch directory under the store's `.tmp`, removed on drop.
struct WorkDir(PathBuf);
impl WorkDir {
    fn new(store: &Store, tag: &str) -> Result<WorkDir, BuildError> {
        let dir = store.root().join(".tmp").join(format!("build-{tag}.{}", std::process::id()));
        let _ = files::remove_tree(&dir);
        fs::create_dir_all(&dir).map_err(FileError::at("creating", &dir))?;
        Ok(WorkDir(dir))
    }
}
impl Drop for WorkDir {
    fn drop(&mut self) {
        let _ = files::remove_tree(&self.0);
    }
}

/// The single file inside a fixed-output entry.
pub fn input_file(store: &Store, inputs: &[Filled], id: &str) -> Result<PathBuf, BuildError> {
    let f = inputs.iter().find(|f| f.input.id == id).ok_or_else(|| BuildError::MissingInput(id.to_owned()))?;
    let m = store.manifest(&f.path)?;
    let name = m.outputs.keys().next().ok_or_else(|| BuildError::MissingInput(id.to_owned()))?;
    Ok(store.entry_dir(&f.path).join(name))
}

/// Reads sources 0 (the raw base disk) and 1 (the spill file).
struct BuildSources<'a> {
    disk: &'a File,
    spill: &'a Spill,
}
impl Sources for BuildSources<'_> {
    fn read_at(&mut self, source: u32, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        match source {
            DISK_SOURCE => self.disk.read_exact_at(buf, offset),
            layers::SPILL_SOURCE => self.spill.read_at(offset, buf),
            other => Err(io::Error::other(format!("unknown content source {other}"))),
        }
    }
}

/// A window of a file, as a `Read + Seek` from 0.
struct Window<'a> {
    file: &'a File,
    start: u64,
    pos: u64,
}
impl Read for Window<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.file.read_at(buf, self.start + self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }
}
impl Seek for Window<'_> {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        self.pos = match to {
            SeekFrom::Start(o) => o,
            SeekFrom::Current(d) => self.pos.checked_add_signed(d).ok_or_else(|| io::Error::other("seek"))?,
            SeekFrom::End(_) => return Err(io::Error::other("seek from end in a window")),
        };
        Ok(self.pos)
    }
}

/// Decodes the base image into a sparse raw file (all-zero runs skipped).
fn materialize_base(path: &Path, format: BaseFormat, dest: &Path) -> Result<File, BuildError> {
    let base_err = |source| BuildError::Base { path: path.to_owned(), source };
    let f = File::open(path).map_err(FileError::at("opening", path))?;
    let out = File::options()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(dest)
        .map_err(FileError::at("creating", dest))?;
    match format {
        BaseFormat::Raw => {
            let len = f.metadata().map_err(FileError::at("reading", path))?.len();
            out.set_len(len).map_err(FileError::at("sizing", dest))?;
            copy_nonzero((&f, path), &mut FileSink { file: &out, base: 0 }, dest, 0, len)?;
        }
        BaseFormat::Qcow2 => {
            let mut q = Qcow2::open(f).map_err(base_err)?;
            let len = q.size();
            out.set_len(len).map_err(FileError::at("sizing", dest))?;
            let mut buf = vec![0u8; 1 << 20];
            let mut at = 0;
            while at < len {
                let n = (len - at).min(buf.len() as u64) as usize;
                q.read_at(at, &mut buf[..n]).map_err(base_err)?;
                FileSink { file: &out, base: 0 }
                    .write_nonzero(at, &buf[..n])
                    .map_err(FileError::at("writing", dest))?;
                at += n as u64;
            }
        }
    }
    Ok(out)
}

/// The data ranges of a sparse file (`SEEK_DATA`/`SEEK_HOLE`), so that holes
/// are never read. A file system without the calls reports one range.
fn data_ranges(f: &File, size: u64) -> Vec<(u64, u64)> {
    use rustix::fs::{SeekFrom, seek};
    use rustix::io::Errno;
    let mut out = Vec::new();
    let mut at = 0;
    while at < size {
        let data = match seek(f, SeekFrom::Data(at)) {
            Ok(data) => data,
            Err(Errno::NXIO) => break, // no data after `at`
            Err(_) => return vec![(0, size)],
        };
        let end = seek(f, SeekFrom::Hole(data)).unwrap_or(size);
        out.push((data, end - data));
        at = end;
    }
    out
}

/// A file as a [`Sink`], from byte `base` on.
struct FileSink<'a> {
    file: &'a File,
    base: u64,
}
impl Sink for FileSink<'_> {
    fn write_at(&mut self, offset: u64, data: &[u8]) -> io::Result<()> {
        self.file.write_all_at(data, self.base + offset)
    }
}

/// Copies `len` bytes of `input` from `from` to `out` at `from` (`out_path`
/// names it), leaving out zero blocks.
fn copy_nonzero(
    (input, in_path): (&File, &Path),
    out: &mut FileSink,
    out_path: &Path,
    from: u64,
    len: u64,
) -> Result<(), BuildError> {
    let mut buf = vec![0u8; 1 << 20];
    let mut done = 0;
    while done < len {
        let n = (len - done).min(buf.len() as u64) as usize;
        input.read_exact_at(&mut buf[..n], from + done).map_err(FileError::at("reading", in_path))?;
        out.write_nonzero(from + done, &buf[..n]).map_err(FileError::at("writing", out_path))?;
        done += n as u64;
    }
    Ok(())
}

/// The label of the ext4 in a partition, if it holds one.
fn ext4_label(disk: &File, p: &gpt::Partition) -> Option<Vec<u8>> {
    let mut sb = [0u8; 1024];
    disk.read_exact_at(&mut sb, p.first_lba * SECTOR + 1024).ok()?;
    if crate::format::endian::le16(&sb, 56) != crate::format::ext4::MAGIC {
        return None;
    }
    let mut label = sb[120..136].to_vec();
    while label.last() == Some(&0) {
        label.pop();
    }
    Some(label)
}

fn build_outputs(
    store: &Store,
    loaded: &LoadedRecipe,
    inputs: &[Filled],
    out_dir: &Path,
    work: &Path,
    reporter: &dyn Reporter,
) -> Result<Outputs, BuildError> {
    let recipe = &loaded.recipe;
    let epoch = i64::try_from(recipe.output.epoch).unwrap_or(i64::MAX);
    // 2. Base.
    reporter.note("reading the base image");
    let base_path = input_file(store, inputs, &recipe.base.input_id())?;
    let disk_path = work.join("base.raw");
    let disk = materialize_base(&base_path, recipe.base.format, &disk_path)?;
    let disk_len = disk.metadata().map_err(FileError::at("reading", &disk_path))?.len();
    let table = Gpt::read(&mut Window { file: &disk, start: 0, pos: 0 }, disk_len)?;
    let root_part = match &recipe.base.root {
        RootSelector::Partition(n) => table.partition(*n).cloned(),
        RootSelector::Label(l) => {
            table.partitions.iter().find(|p| ext4_label(&disk, p).as_deref() == Some(l.as_bytes())).cloned()
        }
    }
    .ok_or_else(|| BuildError::NoRoot(format!("{:?}", recipe.base.root)))?;
    let root_offset = root_part.first_lba * SECTOR;
    let (mut tree, info) =
        ext4r::read_tree(&mut Window { file: &disk, start: root_offset, pos: 0 }, DISK_SOURCE, root_offset)?;

    // 3. Layers.
    let mut spill = Spill::create(&work.join("spill"))?;
    let max_file = recipe.output.virtual_size.0;
    apply_layers(store, loaded, inputs, &mut tree, &mut spill, &disk, max_file, reporter)?;
    let removed = layers::scrub(&mut tree);
    if !removed.is_empty() {
        reporter.note(&format!("scrubbed {} files (host keys, logs, machine identity)", removed.len()));
    }

    // 4. Root file system.
    let opts = ext4w::Options {
        label: info.label.clone(),
        uuid: info.uuid,
        hash_seed: info.hash_seed,
        epoch,
        headroom: recipe.output.headroom.0,
    };
    let plan = ext4w::plan(&tree, &opts)?;

    // 5. Disk.
    let fs_sectors = plan.bytes() / SECTOR;
    let mut new_table = table.clone();
    let root_last = root_part.first_lba + fs_sectors - 1;
    for p in &new_table.partitions {
        if p.number != root_part.number && p.last_lba >= root_part.first_lba {
            return Err(BuildError::Size(format!(
                "partition {} lies after the root partition; the root must be last to grow",
                p.number
            )));
        }
    }
    new_table.partitions.iter_mut().find(|p| p.number == root_part.number).expect("root").last_lba = root_last;
    let need = (root_last + 1 + new_table.array_sectors() + 1) * SECTOR;
    let size = recipe.output.virtual_size.0;
    if size < need {
        return Err(BuildError::Size(format!(
            "the image needs {need} bytes ({} MiB) but `virtual_size` is {size} bytes: raise it in the recipe",
            need.div_ceil(1 << 20)
        )));
    }
    let sectors = size / SECTOR;
    reporter.note(&format!("writing a {} MiB root file system", plan.bytes() >> 20));
    let raw_path = work.join("disk.raw");
    let raw = File::options()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(&raw_path)
        .map_err(FileError::at("creating", &raw_path))?;
    raw.set_len(sectors * SECTOR).map_err(FileError::at("sizing", &raw_path))?;
    for p in &table.partitions {
        if p.number != root_part.number {
            let len = p.sectors() * SECTOR;
            let mut out = FileSink { file: &raw, base: 0 };
            copy_nonzero((&disk, &disk_path), &mut out, &raw_path, p.first_lba * SECTOR, len)?;
        }
    }
    let rendered = new_table.render(sectors)?;
    let mut primary = rendered.primary;
    // Keep the base's MBR boot code (BIOS boot loaders live there).
    disk.read_exact_at(&mut primary[..440], 0).map_err(FileError::at("reading the MBR of", &disk_path))?;
    raw.write_all_at(&primary, 0).map_err(FileError::at("writing the GPT into", &raw_path))?;
    raw.write_all_at(&rendered.backup, rendered.backup_lba * SECTOR)
        .map_err(FileError::at("writing the backup GPT into", &raw_path))?;
    let mut root_fs = FileSink { file: &raw, base: root_offset };
    ext4w::write(&plan, &mut BuildSources { disk: &disk, spill: &spill }, &mut root_fs, &raw_path)?;
    raw.sync_all().map_err(FileError::at("flushing", &raw_path))?;

    // 6. Outputs.
    let mut outputs = Outputs::default();
    let boot = table.partitions.iter().find(|p| ext4_label(&disk, p).as_deref() == Some(b"BOOT"));
    let (boot_tree, boot_prefix): (Tree, &[u8]) = match boot {
        Some(p) => {
            let off = p.first_lba * SECTOR;
            (ext4r::read_tree(&mut Window { file: &disk, start: off, pos: 0 }, DISK_SOURCE, off)?.0, b"")
        }
        None => (tree.clone(), b"/boot"),
    };
    for (want, out_name) in [("vmlinuz", "vmlinuz"), ("initrd.img", "initrd.img")] {
        let mut p = boot_prefix.to_vec();
        p.extend_from_slice(b"/");
        p.extend_from_slice(want.as_bytes());
        let bytes = boot_tree
            .read_file(&p, &mut BuildSources { disk: &disk, spill: &spill })
            .ok_or_else(|| BuildError::NoKernel(String::from_utf8_lossy(&p).into_owned()))?;
        let out_path = out_dir.join(out_name);
        fs::write(&out_path, &bytes).map_err(FileError::at("writing", &out_path))?;
        outputs.files.insert(
            out_name.into(),
            OutputRecord { sha256: Sha256::of(&bytes), size: bytes.len() as u64, executable: false },
        );
    }
    reporter.note("compressing the disk to qcow2");
    let qcow = out_dir.join("disk.qcow2");
    match recipe.output.compression {
        // hearth's own writer: the bytes do not depend on the host's QEMU.
        Compression::Zstd => {
            let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
            let mut out = File::create(&qcow).map_err(FileError::at("creating", &qcow))?;
            let data = data_ranges(&raw, sectors * SECTOR);
            let mut read_at = |off: u64, buf: &mut [u8]| {
                raw.read_exact_at(buf, off).map_err(|e| FileError::at("reading", &raw_path)(e).into())
            };
            qcow2::write::write_qcow2_sparse(&mut read_at, &data, sectors * SECTOR, &mut out, threads)
                .map_err(FileError::carried_or("writing", &qcow))?;
            out.sync_all().map_err(FileError::at("flushing", &qcow))?;
        }
        // zlib needs deflate with qemu's 4 KiB window: left to qemu-img.
        Compression::Zlib => {
            cmd::run(
                Command::new("qemu-img")
                    .args(["convert", "-f", "raw", "-O", "qcow2", "-c", "-o", "compression_type=zlib"])
                    .arg(&raw_path)
                    .arg(&qcow),
            )?;
        }
    }
    let (sha, size) = Sha256::of_reader(File::open(&qcow).map_err(FileError::at("opening", &qcow))?)
        .map_err(FileError::at("reading", &qcow))?;
    outputs.files.insert("disk.qcow2".into(), OutputRecord { sha256: sha, size, executable: false });
    outputs.references = inputs.iter().map(|f| f.path.to_string()).collect();
    outputs.info.insert("recipe".into(), recipe.name.get_ref().clone());
    outputs.info.insert("root-partition".into(), root_part.number.to_string());
    outputs.info.insert("root-bytes".into(), plan.bytes().to_string());
    outputs.info.insert("virtual-size".into(), size.to_string());
    Ok(outputs)
}

#[allow(clippy::too_many_arguments)]
fn apply_layers(
    store: &Store,
    loaded: &LoadedRecipe,
    inputs: &[Filled],
    tree: &mut Tree,
    spill: &mut Spill,
    disk: &File,
    max_file: u64,
    reporter: &dyn Reporter,
) -> Result<(), BuildError> {
    let recipe = &loaded.recipe;
    let read_tree_file = |tree: &Tree, spill: &Spill, path: &[u8]| {
        tree.read_file(path, &mut BuildSources { disk, spill }).map(|b| String::from_utf8_lossy(&b).into_owned())
    };
    // Debs: all dependencies checked before any is unpacked.
    if !recipe.debs.is_empty() {
        reporter.note(&format!("unpacking {} packages", recipe.debs.len()));
        let status_text = read_tree_file(tree, spill, b"/var/lib/dpkg/status").unwrap_or_default();
        let mut status = crate::format::deb::parse_stanzas(&status_text)
            .map_err(|source| LayerError::Deb { origin: "the base's /var/lib/dpkg/status".into(), source })?;
        let mut debs = Vec::new();
        for d in &recipe.debs {
            let path = input_file(store, inputs, &d.input_id())?;
            let bytes = fs::read(&path).map_err(FileError::at("reading", &path))?;
            debs.push(layers::open_deb(&bytes, &format!("package `{}`", d.name.get_ref()))?);
        }
        let mut available = layers::installed(&status_text);
        available.extend(debs.iter().filter_map(|d| layers::Pkg::from_stanza(&d.control, "the recipe")));
        for d in &debs {
            layers::check_depends(&d.control, &available)?;
        }
        for d in &debs {
            layers::install_deb(tree, spill, d, &mut status, max_file)?;
        }
        let text = layers::render_status(&mut status);
        let data = spill.append_bytes(text.as_bytes())?;
        tree.insert(b"/var/lib/dpkg/status", Node { kind: Kind::File(data), meta: Meta::root(0o644) }).map_err(
            |source| LayerError::Tree { origin: "dpkg database".into(), member: "/var/lib/dpkg/status".into(), source },
        )?;
    }
    for a in &recipe.archives {
        let path = input_file(store, inputs, &a.input_id())?;
        let f = File::open(&path).map_err(FileError::at("opening", &path))?;
        let name = a.name.get_ref();
        tree.mkdir_p(a.prefix.0.as_bytes(), &Meta::root(0o755)).map_err(|source| LayerError::Tree {
            origin: format!("archive `{name}`"),
            member: a.prefix.0.clone(),
            source,
        })?;
        let u = Unpack {
            origin: &format!("archive `{name}`"),
            prefix: &a.prefix.0,
            strip: a.strip_components as usize,
            include: &a.include,
            allow_devices: false,
            force_owner: Some((0, 0)),
            max_file,
        };
        layers::unpack_archive(tree, spill, io::BufReader::with_capacity(1 << 20, f), &u)?;
    }
    let passwd = read_tree_file(tree, spill, b"/etc/passwd").unwrap_or_default();
    let group = read_tree_file(tree, spill, b"/etc/group").unwrap_or_default();
    let dir = loaded.path.parent().unwrap_or(Path::new("."));
    for f in &recipe.files {
        let path = f.path.get_ref().0.as_bytes();
        let (uid, gid) = layers::resolve_owner(&f.owner, &passwd, &group)?;
        let meta = Meta { perm: f.mode.0 as u16, uid, gid, mtime: i64::MAX, xattrs: BTreeMap::new() };
        let kind = if let Some(target) = &f.symlink {
            Kind::Symlink(target.as_bytes().to_vec())
        } else if let Some(text) = &f.content {
            Kind::File(spill.append_bytes(text.as_bytes())?)
        } else if let Some(src) = &f.source {
            let p = dir.join(&src.0);
            Kind::File(spill.append_bytes(&fs::read(&p).map_err(FileError::at("reading", &p))?)?)
        } else {
            let p = input_file(store, inputs, &f.input_id())?;
            let mut file = PathReader::open(&p)?;
            let len = file.size()?;
            Kind::File(spill.append(&mut file, len, || format!("`{}`", p.display()))?)
        };
        let parent = &path[..path.iter().rposition(|b| *b == b'/').unwrap_or(0)];
        let mkdir_err =
            |source| LayerError::Tree { origin: "files".into(), member: f.path.get_ref().0.clone(), source };
        if !parent.is_empty() {
            tree.mkdir_p(parent, &Meta::root(0o755)).map_err(mkdir_err)?;
        }
        tree.insert(path, Node { kind, meta }).map_err(|source| LayerError::Tree {
            origin: "files".into(),
            member: f.path.get_ref().0.clone(),
            source,
        })?;
    }
    if !recipe.images.is_empty() {
        reporter.note(&format!("adding {} OCI archives under {}", recipe.images.len(), layers::IMAGES_DIR));
        tree.mkdir_p(layers::IMAGES_DIR.as_bytes(), &Meta::root(0o755)).map_err(|source| LayerError::Tree {
            origin: "images".into(),
            member: layers::IMAGES_DIR.into(),
            source,
        })?;
        for img in &recipe.images {
            let id = img.input_id();
            let filled =
                inputs.iter().find(|f| f.input.id == id).ok_or_else(|| BuildError::MissingInput(id.clone()))?;
            let layout = store.entry_dir(&filled.path);
            let data: Data =
                spill.append_with(|w| crate::oci::write_archive(&layout, loaded.recipe.output.epoch, w))?;
            let path = format!("{}/{}.tar", layers::IMAGES_DIR, store::sanitize_name(img.reference.get_ref()));
            tree.insert(path.as_bytes(), Node { kind: Kind::File(data), meta: Meta::root(0o644) })
                .map_err(|source| LayerError::Tree { origin: "images".into(), member: path.clone(), source })?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::recipe::{LoadedRecipe, Pins, parse_recipe};

    fn loaded(text: &str) -> LoadedRecipe {
        LoadedRecipe {
            path: PathBuf::from("/nonexistent/r.toml"),
            pins_path: PathBuf::from("/nonexistent/r.lock"),
            recipe: parse_recipe(text).unwrap(),
            pins: Pins::default(),
            text: text.to_owned(),
        }
    }

    #[test]
    fn the_key_ignores_layout_and_comments_but_not_values() {
        let text = "name = \"x\"\n[output]\nvirtual_size = \"1GiB\"\nepoch = 5\n[base]\nname = \"b\"\n\
                    urls = [\"http://127.0.0.1:1/b\"]\nsha256 = \"0000000000000000000000000000000000000000000000000000000000000000\"\nformat = \"raw\"\n";
        let a = key_document(&loaded(text), &[]).unwrap();
        let commented = format!("# a comment that moves every line\n\n{text}");
        assert_eq!(a, key_document(&loaded(&commented), &[]).unwrap());
        let changed = text.replace("epoch = 5", "epoch = 6");
        assert_ne!(a, key_document(&loaded(&changed), &[]).unwrap());
    }
}
