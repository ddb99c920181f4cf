//! `rate` (not built yet).
/// Not built yet.
pub fn command(
    _a: &crate::cli::RateArgs,
) -> anyhow::Result<(crate::summary::Summary, std::path::PathBuf)> {
    anyhow::bail!("rate: not built yet")
}
