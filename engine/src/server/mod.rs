//! (placeholder) Workers, connections and drivers; written on another branch.

/// Runs the server until it is told to stop (placeholder for the real implementation).
pub fn run(
    _cfg: crate::config::ServeConfig,
    _demo: Option<crate::demo::DemoInfo>,
) -> anyhow::Result<()> {
    todo!()
}
