//! weir-bench: whole-system benchmarks (skeleton).
fn main() {
    eprintln!("weir-bench: not built yet");
    std::process::exit(1);
}
