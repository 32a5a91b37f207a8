// The C++ classes of vdi.h are implemented in Rust under their Itanium-mangled
// names (src/cpp_abi.rs); device objects are allocated with the C++ operator new so
// that clients may `delete` them. That needs libstdc++ at link time.
fn main() {
    println!("cargo:rustc-link-lib=dylib=stdc++");
    println!("cargo:rerun-if-changed=build.rs");
}
