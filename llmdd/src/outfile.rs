//! Output files created safely: a report, trace or recording describes other users'
//! processes, and llmdd runs as root, so an output is always a new file of mode 0600 (never
//! an existing file that keeps its mode, never the target of a symlink planted at the path).
//! The file is created under a unique hidden name beside the path (`O_EXCL`, `O_NOFOLLOW`)
//! and renamed into place at once: `rename` replaces whatever was at the path, a symlink
//! included, without following it. Writing then goes on through the open descriptor.

use std::{
    fs::File,
    io,
    os::unix::fs::OpenOptionsExt,
    path::{Path, PathBuf},
};

/// Creates `path` as a new, empty file of mode 0600, replacing what was there.
pub fn create_private(path: &Path) -> io::Result<File> {
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "the path names no file"))?;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let mut last = None;
    for n in 0..64u32 {
        let mut hidden = std::ffi::OsString::from(".");
        hidden.push(name);
        hidden.push(format!(".llmdd-{}-{n}", std::process::id()));
        let tmp = dir.join(hidden);
        let opened = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&tmp);
        match opened {
            Ok(file) => {
                if let Err(e) = std::fs::rename(&tmp, path) {
                    let _ = std::fs::remove_file(&tmp);
                    return Err(e);
                }
                return Ok(file);
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => last = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last.unwrap_or_else(|| io::Error::other("no free temporary name")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    fn scratch(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("llmdd-outfile-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).expect("scratch dir");
        d
    }

    #[test]
    fn a_planted_symlink_is_replaced_not_followed() {
        let d = scratch("symlink");
        let victim = d.join("victim");
        std::fs::write(&victim, "precious").expect("victim");
        let out = d.join("report.json");
        std::os::unix::fs::symlink(&victim, &out).expect("symlink");
        let mut f = create_private(&out).expect("created");
        io::Write::write_all(&mut f, b"{}").expect("written");
        assert_eq!(
            std::fs::read_to_string(&victim).expect("victim"),
            "precious"
        );
        let meta = std::fs::symlink_metadata(&out).expect("output");
        assert!(meta.file_type().is_file(), "the output is a plain file now");
        assert_eq!(std::fs::read_to_string(&out).expect("output"), "{}");
    }

    #[test]
    fn an_existing_file_does_not_keep_its_mode() {
        let d = scratch("mode");
        let out = d.join("trace.json");
        std::fs::write(&out, "old contents").expect("old");
        std::fs::set_permissions(&out, std::fs::Permissions::from_mode(0o666)).expect("chmod");
        let before = std::fs::metadata(&out).expect("old").ino();
        drop(create_private(&out).expect("created"));
        let meta = std::fs::metadata(&out).expect("new");
        assert_eq!(meta.mode() & 0o777, 0o600);
        assert_eq!(meta.len(), 0);
        assert_ne!(meta.ino(), before, "a new file, not the old one truncated");
        let left: Vec<_> = std::fs::read_dir(&d).expect("dir").collect();
        assert_eq!(left.len(), 1, "no temporary file left behind");
    }

    #[test]
    fn a_directory_at_the_path_is_an_error_and_leaves_nothing() {
        let d = scratch("dir");
        let out = d.join("out");
        std::fs::create_dir(&out).expect("dir");
        assert!(create_private(&out).is_err());
        assert_eq!(std::fs::read_dir(&d).expect("dir").count(), 1);
    }
}
