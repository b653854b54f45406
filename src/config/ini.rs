//! (being written)
use super::{Config, ConfigError};
pub fn load(_path: &std::path::Path) -> Result<Config, ConfigError> {
    Err(ConfigError::Msg("ini: not yet".into()))
}
