//! Roots and garbage collection: `STORE/.roots/<name>` lists entries to keep;
//! `gc` removes every entry outside their closure and debris (interrupted
//! downloads, temporary directories) that no running process owns.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use super::{EntryGuard, PARTIAL_DIR, ROOTS_DIR, Result, Store, StorePath, TMP_DIR, check_name};
use crate::files::{self, FileError, remove_tree};

/// Mode of a root file.
const ROOT_MODE: u32 = 0o644;

/// What [`Store::gc`] removed (or would remove).
#[derive(Debug, Default)]
pub struct GcReport {
    /// Entries no root keeps.
    pub entries: Vec<StorePath>,
    /// Partial downloads and temporary directories nobody owns.
    pub debris: Vec<PathBuf>,
}

impl Store {
    /// Records a root named `name` that keeps `paths` (and their closures) alive.
    pub fn add_root(&self, name: &str, paths: &[StorePath]) -> Result<()> {
        check_name(name)?;
        let file = self.root.join(ROOTS_DIR).join(name);
        let mut lines: Vec<String> = paths.iter().map(|p| p.to_string()).collect();
        lines.sort();
        lines.dedup();
        let body = lines.iter().map(|l| format!("{l}\n")).collect::<String>();
        files::write_atomic(&file, body.as_bytes(), ROOT_MODE)?;
        Ok(())
    }

    /// Removes the root named `name`, if there is one.
    pub fn remove_root(&self, name: &str) -> Result<()> {
        check_name(name)?;
        let file = self.root.join(ROOTS_DIR).join(name);
        Ok(files::remove_if_present(&file)?)
    }

    /// All roots with the entries they name.
    pub fn roots(&self) -> Result<BTreeMap<String, Vec<StorePath>>> {
        let dir = self.root.join(ROOTS_DIR);
        let mut out = BTreeMap::new();
        for item in fs::read_dir(&dir).map_err(FileError::at("reading", &dir))? {
            let item = item.map_err(FileError::at("reading", &dir))?;
            let name = item.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') {
                continue;
            }
            let body = fs::read_to_string(item.path()).map_err(FileError::at("reading root", &item.path()))?;
            let paths = body.lines().filter(|l| !l.is_empty()).filter_map(|l| StorePath::parse(l).ok());
            out.insert(name, paths.collect());
        }
        Ok(out)
    }

    /// Removes every entry not in the closure of a root, and debris no running
    /// process owns (interrupted downloads, temporary directories of crashed
    /// builds). With `dry_run`, only reports.
    pub fn gc(&self, dry_run: bool) -> Result<GcReport> {
        let rooted: Vec<StorePath> =
            self.roots()?.into_values().flatten().filter(|p| self.entry_dir(p).exists()).collect();
        let live = self.closure(&rooted)?;
        let mut report = GcReport::default();
        for p in self.list()? {
            if live.contains(&p) {
                continue;
            }
            if !dry_run {
                let _guard = self.guard(p.hash(), || {})?;
                remove_tree(&self.entry_dir(&p))?;
            }
            report.entries.push(p);
        }
        for sub in [PARTIAL_DIR, TMP_DIR] {
            let dir = self.root.join(sub);
            for item in fs::read_dir(&dir).map_err(FileError::at("reading", &dir))? {
                let item = item.map_err(FileError::at("reading", &dir))?;
                let name = item.file_name().to_string_lossy().into_owned();
                if let Some(_guard) = self.debris_guard(&name)? {
                    if !dry_run {
                        remove_tree(&item.path())?;
                    }
                    report.debris.push(item.path());
                }
            }
        }
        report.debris.sort();
        Ok(report)
    }

    /// For a name under `.partial` or `.tmp`: `Some` (holding its owner's guard
    /// when it has one) when no live process can be using it.
    fn debris_guard(&self, name: &str) -> Result<Option<Option<EntryGuard>>> {
        // `<hash>-...`: owned by the holder of that hash part's guard.
        if let Some((hash, _)) = name.split_once('-')
            && hash.len() == 32
        {
            return Ok(self.try_guard(hash)?.map(Some));
        }
        // `import.<pid>`, `lock.<pid>.<n>`: owned by a process, if it still runs.
        let pid = name.split('.').nth(1).and_then(|p| p.parse::<u32>().ok());
        match pid {
            Some(pid) if Path::new(&format!("/proc/{pid}")).exists() => Ok(None),
            _ => Ok(Some(None)),
        }
    }
}
