//! With the `tch` feature: the binary (and its tests) find LibTorch's shared libraries where
//! torch-sys linked them from, without LD_LIBRARY_PATH (an rpath to that folder).

fn main() {
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    if std::env::var_os("CARGO_FEATURE_TCH").is_some() {
        if let Ok(lib) = std::env::var("DEP_TCH_LIBTORCH_LIB") {
            println!("cargo:rustc-link-arg=-Wl,-rpath,{lib}");
            // A LibTorch's own dependencies (CUDA's libraries for a GPU build) are found when the
            // program starts, on the machine it runs on; they need not be here to link.
            println!("cargo:rustc-link-arg=-Wl,--allow-shlib-undefined");
        }
    }
}
