//! Recipes (`images/*.toml`) and their pins files (`images/*.lock`, written by
//! `hearth lock`): everything a node image is made of, pinned.
//!
//! Parsing is pure ([`parse_recipe`], [`parse_pins`]); [`load_recipe`] reads the
//! files. Field values are checked while deserialising (digests, URL schemes,
//! modes, sizes, paths), so a bad value is reported with its line and column.
//!
//! ```toml
//! name = "ubuntu-24.04-k8s-1.29"
//! [output]
//! virtual_size = "20GiB"       # size of the disk the image describes
//! headroom = "1GiB"            # free space added to the root filesystem
//! compression = "zstd"         # or "zlib"
//! epoch = 1713830400           # every mtime is clamped to this
//! [base]
//! name = "noble-server-cloudimg-amd64.img"
//! urls = ["https://...", "https://..."]   # tried in order
//! sha256 = "..."
//! format = "qcow2"             # or "raw"
//! root = { label = "cloudimg-rootfs" }    # or { partition = 1 }
//! [[debs]]
//! name = "conntrack"
//! urls = ["https://.../conntrack_1.4.8-1ubuntu1_amd64.deb"]
//! sha256 = "..."               # absent: pinned in x.lock by `hearth lock`
//! [[archives]]
//! name = "containerd"
//! urls = ["https://.../containerd-1.7.27-linux-amd64.tar.gz"]
//! sha256 = "..."
//! prefix = "/usr/local"
//! strip_components = 0
//! include = ["bin/"]
//! [[files]]
//! path = "/usr/local/bin/kubeadm"
//! urls = ["https://.../kubeadm"]     # or `content`, `source = "files/x"`, `symlink = "target"`
//! sha256 = "..."
//! mode = "0755"
//! owner = "root:root"
//! [[images]]
//! reference = "registry.k8s.io/pause:3.9"
//! digest = "sha256:..."
//! [[manifests]]                # fetched and kept with the image, not placed in it:
//! name = "kube-flannel.yml"    # `hearth launch` renders it for the appliance
//! component = "flannel"
//! urls = ["https://.../kube-flannel.yml"]
//! sha256 = "..."
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};
use toml::Spanned;

use crate::digest::Sha256;
use crate::files::FileError;
use crate::store::sanitize_name;

/// Errors reading a recipe or its pins file.
#[derive(Debug, thiserror::Error)]
pub enum RecipeError {
    /// The file cannot be read.
    #[error(transparent)]
    File(#[from] FileError),
    /// TOML syntax or a bad value; the message carries line and column.
    #[error("{}{}", file_prefix(path), source.to_string().trim_end())]
    Parse {
        /// The file, when known.
        path: Option<PathBuf>,
        /// The parser's error (with position and snippet).
        source: toml::de::Error,
    },
    /// A rule between fields is broken.
    #[error("{}line {line}: {message}", file_prefix(path))]
    Invalid {
        /// The file, when known.
        path: Option<PathBuf>,
        /// 1-based line.
        line: usize,
        /// What is wrong.
        message: String,
    },
}

fn file_prefix(path: &Option<PathBuf>) -> String {
    path.as_ref().map(|p| format!("in `{}`, ", p.display())).unwrap_or_default()
}

impl RecipeError {
    fn with_path(self, p: &Path) -> Self {
        match self {
            RecipeError::Parse { source, .. } => RecipeError::Parse { path: Some(p.to_owned()), source },
            RecipeError::Invalid { line, message, .. } => {
                RecipeError::Invalid { path: Some(p.to_owned()), line, message }
            }
            other => other,
        }
    }
}

/// A URL hearth can fetch: `http`, `https` or `file`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct FetchUrl(pub String);

impl<'de> Deserialize<'de> for FetchUrl {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        let parsed = url::Url::parse(&s).map_err(|e| serde::de::Error::custom(format!("`{s}` is not a URL: {e}")))?;
        match parsed.scheme() {
            "http" | "https" | "file" => Ok(FetchUrl(s)),
            other => Err(serde::de::Error::custom(format!(
                "unsupported URL scheme `{other}` in `{s}` (use http, https or file)"
            ))),
        }
    }
}

/// A file mode written as an octal string (`"0755"`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Mode(pub u32);

impl<'de> Deserialize<'de> for Mode {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        match u32::from_str_radix(&s, 8) {
            Ok(m) if m <= 0o7777 && !s.is_empty() => Ok(Mode(m)),
            _ => Err(serde::de::Error::custom(format!("mode `{s}` is not an octal permission like \"0644\""))),
        }
    }
}

impl Serialize for Mode {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format!("{:04o}", self.0))
    }
}

/// A size with an optional binary suffix (`"20GiB"`, `"512MiB"`, `"4096"`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct ByteSize(pub u64);

impl ByteSize {
    /// Parses the text form.
    pub fn parse(s: &str) -> Option<Self> {
        let t = s.trim();
        let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
        let (num, unit) = t.split_at(split);
        let n: u64 = num.parse().ok()?;
        let mult: u64 = match unit.trim() {
            "" | "B" => 1,
            "K" | "KiB" => 1 << 10,
            "M" | "MiB" => 1 << 20,
            "G" | "GiB" => 1 << 30,
            "T" | "TiB" => 1 << 40,
            _ => return None,
        };
        n.checked_mul(mult).map(ByteSize)
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            N(u64),
            S(String),
        }
        match Raw::deserialize(d)? {
            Raw::N(n) => Ok(ByteSize(n)),
            Raw::S(s) => ByteSize::parse(&s)
                .ok_or_else(|| serde::de::Error::custom(format!("`{s}` is not a size like \"20GiB\" or \"512MiB\""))),
        }
    }
}

impl Serialize for ByteSize {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(self.0)
    }
}

/// An absolute path inside the image, normalised, without `..`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct ImagePath(pub String);

impl<'de> Deserialize<'de> for ImagePath {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        let p = Path::new(&s);
        let ok = p.is_absolute() && p.components().all(|c| matches!(c, Component::RootDir | Component::Normal(_)));
        if !ok || s.len() < 2 {
            return Err(serde::de::Error::custom(format!(
                "`{s}` must be an absolute path inside the image, without `..`"
            )));
        }
        Ok(ImagePath(s.trim_end_matches('/').to_owned()))
    }
}

/// A path relative to the recipe's directory, without `..`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct SourcePath(pub String);

impl<'de> Deserialize<'de> for SourcePath {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        let ok = !s.is_empty() && Path::new(&s).components().all(|c| matches!(c, Component::Normal(_)));
        if !ok {
            return Err(serde::de::Error::custom(format!(
                "`{s}` must be a relative path under the recipe's directory, without `..`"
            )));
        }
        Ok(SourcePath(s))
    }
}

/// Output compression of the qcow2.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    /// zstd clusters (the default; needs QEMU >= 5.1 to read).
    #[default]
    Zstd,
    /// zlib clusters (readable by every QEMU).
    Zlib,
}

/// Output settings.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Output {
    /// Virtual size of the disk.
    pub virtual_size: ByteSize,
    /// Free space added to the root filesystem beyond its content.
    #[serde(default = "default_headroom")]
    pub headroom: ByteSize,
    /// qcow2 cluster compression.
    #[serde(default)]
    pub compression: Compression,
    /// Seconds since 1970 that every mtime is clamped to (SOURCE_DATE_EPOCH).
    pub epoch: u64,
}

fn default_headroom() -> ByteSize {
    ByteSize(1 << 30)
}

/// Format of the base image.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BaseFormat {
    /// qcow2 (v2 or v3, zlib or zstd clusters).
    Qcow2,
    /// A raw disk.
    Raw,
}

/// How to find the root partition.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "lowercase")]
pub enum RootSelector {
    /// By filesystem label.
    Label(String),
    /// By 1-based GPT partition number.
    Partition(u32),
}

/// The base cloud image.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Base {
    /// Entry name in the store.
    pub name: Spanned<String>,
    /// Where to fetch it, in order.
    pub urls: Vec<FetchUrl>,
    /// Pinned digest (or from the pins file).
    pub sha256: Option<Sha256>,
    /// qcow2 or raw.
    pub format: BaseFormat,
    /// The root partition.
    #[serde(default = "default_root")]
    pub root: RootSelector,
}

fn default_root() -> RootSelector {
    RootSelector::Label("cloudimg-rootfs".into())
}

/// A .deb package.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Deb {
    /// Package name (also the input's name).
    pub name: Spanned<String>,
    /// Where to fetch it.
    pub urls: Vec<FetchUrl>,
    /// Pinned digest (or from the pins file).
    pub sha256: Option<Sha256>,
}

/// A release tarball unpacked under a prefix.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Archive {
    /// Input name.
    pub name: Spanned<String>,
    /// Where to fetch it.
    pub urls: Vec<FetchUrl>,
    /// Pinned digest (or from the pins file).
    pub sha256: Option<Sha256>,
    /// Directory in the image to unpack into.
    pub prefix: ImagePath,
    /// Leading path components dropped from member names.
    #[serde(default)]
    pub strip_components: u32,
    /// Member path prefixes (after stripping) to keep; empty keeps all.
    #[serde(default)]
    pub include: Vec<String>,
}

/// A single file placed in the image.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSpec {
    /// Where it goes.
    pub path: Spanned<ImagePath>,
    /// Download it from here...
    #[serde(default)]
    pub urls: Vec<FetchUrl>,
    /// ... pinned by this digest (or the pins file).
    pub sha256: Option<Sha256>,
    /// Or take this text.
    pub content: Option<String>,
    /// Or this file under the recipe's directory.
    pub source: Option<SourcePath>,
    /// Or a symbolic link with this target.
    pub symlink: Option<String>,
    /// Permission bits.
    #[serde(default = "default_mode")]
    pub mode: Mode,
    /// `user:group`, by name or number.
    #[serde(default = "default_owner")]
    pub owner: String,
}

fn default_mode() -> Mode {
    Mode(0o644)
}

fn default_owner() -> String {
    "root:root".into()
}

/// An OCI image to preload.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageSpec {
    /// `registry/repository:tag`.
    pub reference: Spanned<String>,
    /// Digest of the image index or manifest (or from the pins file).
    pub digest: Option<Sha256>,
    /// `os/arch` to take from an index.
    #[serde(default = "default_platform")]
    pub platform: String,
}

fn default_platform() -> String {
    "linux/amd64".into()
}

/// A whole recipe.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Recipe {
    /// Name of the image (and of its store entry).
    pub name: Spanned<String>,
    /// Output settings.
    pub output: Output,
    /// The base image.
    pub base: Base,
    /// Debian packages.
    #[serde(default)]
    pub debs: Vec<Deb>,
    /// Release archives.
    #[serde(default)]
    pub archives: Vec<Archive>,
    /// Single files.
    #[serde(default)]
    pub files: Vec<FileSpec>,
    /// OCI images to preload.
    #[serde(default)]
    pub images: Vec<ImageSpec>,
    /// Platform manifests (kept with the image, rendered per appliance).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub manifests: Vec<ManifestSpec>,
}

/// A platform manifest: downloaded and kept in the image's closure, never
/// placed in the image; `hearth launch` renders it for the appliance.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ManifestSpec {
    /// Input name (the file's name in its store entry).
    pub name: Spanned<String>,
    /// The platform component it installs (`flannel`, `local-path`, `metallb`,
    /// `cert-manager`, `ingress-nginx`, `argo-cd`; Helm charts: `harbor`,
    /// `external-secrets`, `arc`, `arc-runner-set`), or `helm`: the Helm
    /// release tarball the host renders the charts with.
    pub component: Spanned<String>,
    /// Where to fetch it.
    pub urls: Vec<FetchUrl>,
    /// Pinned digest (or from the pins file).
    pub sha256: Option<Sha256>,
    /// For a chart inside a source archive: the chart's directory in it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
}

/// Which kind of input, with what that kind needs to be fetched.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum InputKind {
    /// The base image, downloaded.
    Base {
        /// URLs, in order.
        urls: Vec<String>,
    },
    /// A .deb, downloaded.
    Deb {
        /// URLs, in order.
        urls: Vec<String>,
    },
    /// A release archive, downloaded.
    Archive {
        /// URLs, in order.
        urls: Vec<String>,
    },
    /// A file placed in the image, downloaded.
    File {
        /// URLs, in order.
        urls: Vec<String>,
    },
    /// A platform manifest, downloaded (kept, not placed in the image).
    Manifest {
        /// URLs, in order.
        urls: Vec<String>,
    },
    /// An OCI image, pulled from its registry.
    Image {
        /// The image reference.
        reference: String,
        /// `os/arch` to take from an index.
        platform: String,
    },
}

impl InputKind {
    /// The recipe section, the first part of an input's id.
    pub fn section(&self) -> &'static str {
        match self {
            InputKind::Base { .. } => BASE,
            InputKind::Deb { .. } => DEBS,
            InputKind::Archive { .. } => ARCHIVES,
            InputKind::File { .. } => FILES,
            InputKind::Image { .. } => IMAGES,
            InputKind::Manifest { .. } => MANIFESTS,
        }
    }
}

const BASE: &str = "base";
const DEBS: &str = "debs";
const ARCHIVES: &str = "archives";
const FILES: &str = "files";
const IMAGES: &str = "images";
const MANIFESTS: &str = "manifests";

/// An input's id: `<section>/<key>`, the pins file's key.
fn input_id(section: &str, key: &str) -> String {
    format!("{section}/{key}")
}

impl Base {
    /// Its input's id.
    pub fn input_id(&self) -> String {
        input_id(BASE, self.name.get_ref())
    }
}

impl Deb {
    /// Its input's id.
    pub fn input_id(&self) -> String {
        input_id(DEBS, self.name.get_ref())
    }
}

impl Archive {
    /// Its input's id.
    pub fn input_id(&self) -> String {
        input_id(ARCHIVES, self.name.get_ref())
    }
}

impl ManifestSpec {
    /// Its input's id.
    pub fn input_id(&self) -> String {
        input_id(MANIFESTS, self.name.get_ref())
    }
}

impl FileSpec {
    /// Its input's id (for a downloaded file): the whole path, so two files with
    /// one basename differ.
    pub fn input_id(&self) -> String {
        input_id(FILES, self.path.get_ref().0.trim_start_matches('/'))
    }
}

impl ImageSpec {
    /// Its input's id.
    pub fn input_id(&self) -> String {
        input_id(IMAGES, self.reference.get_ref())
    }
}

/// One thing to fetch, with its pin if it has one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Input {
    /// Kind, with its URLs or its image reference.
    pub kind: InputKind,
    /// Stable identifier, `section/name`, used as the pins file's key.
    pub id: String,
    /// Name of the store entry.
    pub name: String,
    /// The pin: sha256 of the bytes, or of the image's index/manifest.
    pub pin: Option<Sha256>,
    /// 1-based line in the recipe.
    pub line: usize,
}

/// The pins file beside a recipe (`x.toml` -> `x.lock`): pins that `hearth lock`
/// resolved, in its `[pins]` table.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pins {
    /// Input id -> digest.
    #[serde(default, rename = "pins")]
    pub by_id: BTreeMap<String, Sha256>,
}

impl Pins {
    /// Canonical text of the pins file.
    pub fn render(&self) -> String {
        let mut out = String::from("# Written by `hearth lock`: pins for inputs the recipe leaves unpinned.\n[pins]\n");
        for (id, d) in &self.by_id {
            out.push_str(&format!("{} = \"{}\"\n", toml_key(id), d));
        }
        out
    }
}

/// A TOML basic string holding `k` exactly (quotes, backslashes and control
/// characters escaped).
fn toml_key(k: &str) -> String {
    let mut out = String::with_capacity(k.len() + 2);
    out.push('"');
    for c in k.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A recipe with its pins, as loaded from disk.
#[derive(Clone, Debug)]
pub struct LoadedRecipe {
    /// The recipe file.
    pub path: PathBuf,
    /// Its pins file (may not exist).
    pub pins_path: PathBuf,
    /// The recipe.
    pub recipe: Recipe,
    /// The pins (empty when the file is absent).
    pub pins: Pins,
    /// The recipe's text (for line numbers).
    pub text: String,
}

fn line_of(text: &str, offset: usize) -> usize {
    // Bytes, not `str`: an offset inside a character cannot panic.
    text.as_bytes()[..offset.min(text.len())].iter().filter(|b| **b == b'\n').count() + 1
}

/// Parses a recipe and checks the rules between its fields.
pub fn parse_recipe(text: &str) -> Result<Recipe, RecipeError> {
    let recipe: Recipe = toml::from_str(text).map_err(|source| RecipeError::Parse { path: None, source })?;
    let invalid = |span: std::ops::Range<usize>, message: String| RecipeError::Invalid {
        path: None,
        line: line_of(text, span.start),
        message,
    };
    crate::store::check_name(recipe.name.get_ref()).map_err(|e| invalid(recipe.name.span(), e.to_string()))?;
    if recipe.base.urls.is_empty() {
        return Err(invalid(recipe.base.name.span(), "the base needs at least one URL".into()));
    }
    let mut ids = BTreeSet::new();
    for input in inputs_of(&recipe, text, &Pins::default()) {
        if !ids.insert(input.id.clone()) {
            return Err(RecipeError::Invalid {
                path: None,
                line: input.line,
                message: format!("`{}` is declared twice", input.id),
            });
        }
        crate::store::check_name(&input.name).map_err(|e| RecipeError::Invalid {
            path: None,
            line: input.line,
            message: e.to_string(),
        })?;
        let no_url = match &input.kind {
            InputKind::Base { urls }
            | InputKind::Deb { urls }
            | InputKind::Archive { urls }
            | InputKind::Manifest { urls } => urls.is_empty(),
            // A file without URLs is not an input; an image has none.
            InputKind::File { .. } | InputKind::Image { .. } => false,
        };
        if no_url {
            return Err(RecipeError::Invalid {
                path: None,
                line: input.line,
                message: format!("`{}` has no URL", input.id),
            });
        }
    }
    for f in &recipe.files {
        let sources = [!f.urls.is_empty(), f.content.is_some(), f.source.is_some(), f.symlink.is_some()];
        if sources.iter().filter(|s| **s).count() != 1 {
            return Err(invalid(
                f.path.span(),
                format!("file `{}` needs exactly one of `urls`, `content`, `source` or `symlink`", f.path.get_ref().0),
            ));
        }
        if f.urls.is_empty() && f.sha256.is_some() {
            return Err(invalid(f.path.span(), format!("file `{}`: `sha256` goes with `urls`", f.path.get_ref().0)));
        }
        if !valid_owner(&f.owner) {
            return Err(invalid(f.path.span(), format!("owner `{}` is not `user:group`", f.owner)));
        }
    }
    for i in &recipe.images {
        crate::oci::Reference::parse(i.reference.get_ref()).map_err(|e| invalid(i.reference.span(), e.to_string()))?;
        if i.platform.split('/').count() != 2 {
            return Err(invalid(i.reference.span(), format!("platform `{}` is not `os/arch`", i.platform)));
        }
    }
    Ok(recipe)
}

fn valid_owner(owner: &str) -> bool {
    let part = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b));
    owner.split_once(':').is_some_and(|(u, g)| part(u) && part(g))
}

/// Parses a pins file.
pub fn parse_pins(text: &str) -> Result<Pins, RecipeError> {
    toml::from_str(text).map_err(|source| RecipeError::Parse { path: None, source })
}

/// Every input of a recipe in declaration order, pins taken from the recipe or,
/// failing that, the pins file.
pub fn inputs_of(recipe: &Recipe, text: &str, pins: &Pins) -> Vec<Input> {
    let urls = |u: &[FetchUrl]| u.iter().map(|x| x.0.clone()).collect::<Vec<_>>();
    let input = |kind: InputKind, id: String, name: String, pin: Option<Sha256>, span: std::ops::Range<usize>| {
        let pin = pin.or_else(|| pins.by_id.get(&id).copied());
        Input { kind, id, name, pin, line: line_of(text, span.start) }
    };
    let b = &recipe.base;
    let mut out = vec![input(
        InputKind::Base { urls: urls(&b.urls) },
        b.input_id(),
        b.name.get_ref().clone(),
        b.sha256,
        b.name.span(),
    )];
    for d in &recipe.debs {
        let kind = InputKind::Deb { urls: urls(&d.urls) };
        out.push(input(kind, d.input_id(), d.name.get_ref().clone(), d.sha256, d.name.span()));
    }
    for a in &recipe.archives {
        let kind = InputKind::Archive { urls: urls(&a.urls) };
        out.push(input(kind, a.input_id(), a.name.get_ref().clone(), a.sha256, a.name.span()));
    }
    for f in recipe.files.iter().filter(|f| !f.urls.is_empty()) {
        let path = &f.path.get_ref().0;
        let name = sanitize_name(path.rsplit('/').next().unwrap_or(path));
        out.push(input(InputKind::File { urls: urls(&f.urls) }, f.input_id(), name, f.sha256, f.path.span()));
    }
    for i in &recipe.images {
        let r = i.reference.get_ref();
        let kind = InputKind::Image { reference: r.clone(), platform: i.platform.clone() };
        out.push(input(kind, i.input_id(), sanitize_name(r), i.digest, i.reference.span()));
    }
    for m in &recipe.manifests {
        let kind = InputKind::Manifest { urls: urls(&m.urls) };
        out.push(input(kind, m.input_id(), m.name.get_ref().clone(), m.sha256, m.name.span()));
    }
    out
}

/// The pins file that belongs to a recipe: `x.toml` -> `x.lock`.
pub fn pins_path_for(recipe: &Path) -> PathBuf {
    recipe.with_extension("lock")
}

/// Reads a recipe and its lock (if any).
pub fn load_recipe(path: &Path) -> Result<LoadedRecipe, RecipeError> {
    let text = std::fs::read_to_string(path).map_err(FileError::at("reading", path))?;
    let recipe = parse_recipe(&text).map_err(|e| e.with_path(path))?;
    let pins_path = pins_path_for(path);
    let pins = match std::fs::read_to_string(&pins_path) {
        Ok(t) => parse_pins(&t).map_err(|e| e.with_path(&pins_path))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Pins::default(),
        Err(e) => return Err(FileError::at("reading", &pins_path)(e).into()),
    };
    for f in &recipe.files {
        if let Some(src) = &f.source {
            let full = path.parent().unwrap_or(Path::new(".")).join(&src.0);
            if !full.is_file() {
                return Err(RecipeError::Invalid {
                    path: Some(path.to_owned()),
                    line: line_of(&text, f.path.span().start),
                    message: format!("source `{}` does not exist (looked at `{}`)", src.0, full.display()),
                });
            }
        }
    }
    Ok(LoadedRecipe { path: path.to_owned(), pins_path, recipe, pins, text })
}

impl LoadedRecipe {
    /// Every input with its pin.
    pub fn inputs(&self) -> Vec<Input> {
        inputs_of(&self.recipe, &self.text, &self.pins)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
name = "fixture"
[output]
virtual_size = "4GiB"
epoch = 1700000000
[base]
name = "base.qcow2"
urls = ["http://127.0.0.1:1/base.qcow2"]
sha256 = "0000000000000000000000000000000000000000000000000000000000000000"
format = "qcow2"
[[debs]]
name = "hello"
urls = ["http://127.0.0.1:1/hello.deb"]
[[files]]
path = "/usr/local/bin/tool"
urls = ["file:///tmp/tool"]
mode = "0755"
[[files]]
path = "/etc/motd"
content = "hi\n"
[[images]]
reference = "127.0.0.1:5000/test/img:1.0"
digest = "sha256:1111111111111111111111111111111111111111111111111111111111111111"
"#;

    #[test]
    fn parses_and_lists_inputs() {
        let r = parse_recipe(GOOD).unwrap();
        assert_eq!(r.output.virtual_size, ByteSize(4 << 30));
        let pins = parse_pins(
            "[pins]\n\"debs/hello\" = \"2222222222222222222222222222222222222222222222222222222222222222\"\n",
        )
        .unwrap();
        let inputs = inputs_of(&r, GOOD, &pins);
        let ids: Vec<_> = inputs.iter().map(|i| (i.id.as_str(), i.pin.is_some(), i.line)).collect();
        assert_eq!(
            ids,
            vec![
                ("base/base.qcow2", true, 7),
                ("debs/hello", true, 12),
                ("files/usr/local/bin/tool", false, 15),
                ("images/127.0.0.1:5000/test/img:1.0", true, 22),
            ]
        );
        assert_eq!(inputs[1].kind, InputKind::Deb { urls: vec!["http://127.0.0.1:1/hello.deb".into()] });
        let image =
            InputKind::Image { reference: "127.0.0.1:5000/test/img:1.0".into(), platform: "linux/amd64".into() };
        assert_eq!(inputs[3].kind, image);
        assert_eq!(parse_pins(&pins.render()).unwrap(), pins);
    }

    fn err(text: &str) -> String {
        parse_recipe(text).unwrap_err().to_string()
    }

    #[test]
    fn bad_values_point_at_their_line() {
        let short = GOOD.replace("0000000000000000000000000000000000000000000000000000000000000000", "abc");
        let e = err(&short);
        assert!(e.contains("line 9") && e.contains("64 hex digits"), "{e}");
        let ftp = GOOD.replace("http://127.0.0.1:1/hello.deb", "ftp://127.0.0.1/hello.deb");
        let e = err(&ftp);
        assert!(e.contains("line 13") && e.contains("unsupported URL scheme `ftp`"), "{e}");
        let e = err(&GOOD.replace("mode = \"0755\"", "mode = \"rwx\""));
        assert!(e.contains("line 17") && e.contains("octal"), "{e}");
        let e = err(&GOOD.replace("[[images]]", "[[images]\n"));
        assert!(e.contains("TOML parse error"), "{e}");
        let e = err(&GOOD.replace("path = \"/etc/motd\"", "path = \"/etc/../motd\""));
        assert!(e.contains("without `..`"), "{e}");
    }

    #[test]
    fn rules_between_fields() {
        let e = err(&GOOD.replace("content = \"hi\\n\"", "content = \"hi\"\nsource = \"x\""));
        assert!(e.contains("line 19") && e.contains("exactly one of"), "{e}");
        let dup = format!("{GOOD}[[debs]]\nname = \"hello\"\nurls = [\"http://127.0.0.1:1/h2.deb\"]\n");
        let e = err(&dup);
        assert!(e.contains("`debs/hello` is declared twice"), "{e}");
        let e = err(&GOOD.replace("127.0.0.1:5000/test/img:1.0", "UPPER/Case"));
        assert!(e.contains("line 22"), "{e}");
        let e = err(&GOOD.replace("epoch = 1700000000", "epoch = 1700000000\ncolour = 1"));
        assert!(e.contains("unknown field `colour`"), "{e}");
    }

    proptest::proptest! {
        #[test]
        fn pins_round_trip(by_id in proptest::collection::btree_map(".{0,40}", proptest::array::uniform32(0u8..), 0..8)) {
            let pins = Pins { by_id: by_id.into_iter().map(|(k, v)| (k, Sha256(v))).collect() };
            proptest::prop_assert_eq!(parse_pins(&pins.render()).unwrap(), pins);
        }

        #[test]
        fn sizes_round_trip(n in 0u64..1 << 40, unit in 0usize..4) {
            let (suffix, mult) = [("", 1u64), ("KiB", 1 << 10), ("MiB", 1 << 20), ("GiB", 1 << 30)][unit];
            proptest::prop_assert_eq!(ByteSize::parse(&format!("{n}{suffix}")), n.checked_mul(mult).map(ByteSize));
        }
    }

    #[test]
    fn sizes() {
        assert_eq!(ByteSize::parse("512MiB"), Some(ByteSize(512 << 20)));
        assert_eq!(ByteSize::parse("7"), Some(ByteSize(7)));
        assert_eq!(ByteSize::parse("1XB"), None);
        assert_eq!(ByteSize::parse("99999999999T"), None);
    }
}
