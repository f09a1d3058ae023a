//! What the fuzz targets share: a scratch directory for parsers that only read paths.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// A directory private to this process (in RAM under `/dev/shm` when there is one, or under
/// `$CLIP_FUZZ_SCRATCH`, which `run.sh` removes afterwards), created once; targets write each
/// input over the same file names in it, so nothing piles up.
pub fn scratch_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let shm = Path::new("/dev/shm");
        let base = match std::env::var_os("CLIP_FUZZ_SCRATCH") {
            Some(dir) => PathBuf::from(dir),
            None if shm.is_dir() => shm.to_path_buf(),
            None => std::env::temp_dir(),
        };
        let dir = base.join(format!("clip-fuzz-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("cannot create the fuzz scratch directory");
        dir
    })
}

/// Writes `bytes` to `name` in [`scratch_dir`] and returns its path.
pub fn scratch_file(name: &str, bytes: &[u8]) -> PathBuf {
    let path = scratch_dir().join(name);
    std::fs::write(&path, bytes).expect("cannot write the fuzz scratch file");
    path
}
