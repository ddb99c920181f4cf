//! (placeholder)
pub struct DemoInfo {
    pub user: String,
    pub password: String,
    pub items: Vec<String>,
}
