//! `compare` (not built yet).
/// Not built yet.
pub fn command(_a: &crate::cli::CompareArgs) -> anyhow::Result<std::process::ExitCode> {
    anyhow::bail!("compare: not built yet")
}
