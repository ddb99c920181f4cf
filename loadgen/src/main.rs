//! weir-load: load generator (skeleton; the loadgen issue fills it in).
fn main() {
    eprintln!("weir-load: not built yet");
    std::process::exit(1);
}
