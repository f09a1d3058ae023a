//! With the `tch` feature: compiles `native/libtorch_ops.cpp` (LibTorch's convolution backward
//! behind a C ABI) against the LibTorch that torch-sys found (DEP_TCH_LIBTORCH_LIB), and lets
//! this crate's test binaries find that LibTorch (an rpath).

fn main() {
    println!("cargo:rerun-if-changed=native/libtorch_ops.cpp");
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    if std::env::var_os("CARGO_FEATURE_TCH").is_none() {
        return;
    }
    let Ok(lib) = std::env::var("DEP_TCH_LIBTORCH_LIB") else {
        panic!("the `tch` feature needs torch-sys to have found LibTorch (DEP_TCH_LIBTORCH_LIB)");
    };
    let root = std::path::Path::new(&lib)
        .parent()
        .expect("LibTorch's lib folder has a parent")
        .to_path_buf();
    let abi = std::env::var("LIBTORCH_CXX11_ABI").unwrap_or_else(|_| "1".to_owned());
    println!("cargo:rerun-if-env-changed=LIBTORCH_CXX11_ABI");
    cc::Build::new()
        .cpp(true)
        .pic(true)
        .warnings(false)
        .include(root.join("include"))
        .flag("-std=c++17")
        .flag(format!("-D_GLIBCXX_USE_CXX11_ABI={abi}"))
        .flag("-DGLOG_USE_GLOG_EXPORT")
        .file("native/libtorch_ops.cpp")
        .compile("clip_libtorch_ops");
    // This crate's own test binaries find LibTorch's libraries without LD_LIBRARY_PATH.
    println!("cargo:rustc-link-arg=-Wl,-rpath,{lib}");
    println!("cargo:rustc-link-arg=-Wl,--allow-shlib-undefined");
}
