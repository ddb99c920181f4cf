//! `demo` (not built yet).
/// Not built yet.
pub fn command(_a: &crate::cli::DemoArgs) -> anyhow::Result<std::process::ExitCode> {
    anyhow::bail!("demo: not built yet")
}
