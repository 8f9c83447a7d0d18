//! Directory listing and durability helpers.

use std::fs::File;
use std::path::{Path, PathBuf};

use crate::error::{IoContext, Result};
use crate::format::parse_file_name;

/// A file of the log or a snapshot, found by name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamedFile {
    /// Full path.
    pub path: PathBuf,
    /// Engine named by the file.
    pub engine: String,
    /// Position named by the file.
    pub pos: u64,
    /// Length in bytes when listed.
    pub len: u64,
}

/// Lists `<engine>.<pos>.<ext>` files in `dir`, sorted by position. `engine = None` lists every
/// engine's files.
///
/// # Errors
/// I/O errors reading the directory.
pub fn list(dir: &Path, engine: Option<&str>, ext: &str) -> Result<Vec<NamedFile>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).ctx(dir)? {
        let entry = entry.ctx(dir)?;
        let path = entry.path();
        let Some((name, pos)) = parse_file_name(&path, ext) else {
            continue;
        };
        if engine.is_some_and(|e| e != name) {
            continue;
        }
        let name = name.to_string();
        let len = entry.metadata().ctx(&path)?.len();
        out.push(NamedFile {
            path,
            engine: name,
            pos,
            len,
        });
    }
    out.sort_by(|a, b| (a.engine.as_str(), a.pos).cmp(&(b.engine.as_str(), b.pos)));
    Ok(out)
}

/// Engines that have segments or snapshots in `dir`, sorted.
///
/// # Errors
/// I/O errors reading the directory.
pub fn engines_in(dir: &Path) -> Result<Vec<String>> {
    let mut names: Vec<String> = list(dir, None, "bin")?
        .into_iter()
        .chain(list(dir, None, "snap")?)
        .map(|f| f.engine)
        .collect();
    names.sort();
    names.dedup();
    Ok(names)
}

/// fsyncs a directory so that a create, rename or delete in it survives power loss.
///
/// # Errors
/// I/O errors.
pub fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir).ctx(dir)?.sync_all().ctx(dir)
}

/// Renames `path` to `path` + `suffix` (never deletes evidence), returning the new path.
///
/// # Errors
/// I/O errors.
pub fn move_aside(path: &Path, suffix: &str) -> Result<PathBuf> {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    let to = PathBuf::from(name);
    std::fs::rename(path, &to).ctx(path)?;
    Ok(to)
}
