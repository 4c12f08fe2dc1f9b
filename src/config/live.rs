//! The configuration in force. Readers load it through an atomic pointer (no lock, no copy);
//! a reload builds a whole new [`Live`] and swaps it in.

use std::sync::Arc;

use arc_swap::ArcSwap;

use super::Config;

/// One generation of validated configuration.
#[derive(Debug)]
pub struct Live {
    pub config: Config,
    /// 1 at start, +1 per successful reload.
    pub generation: u64,
}

/// Shared handle on the configuration in force.
pub type LiveConfig = Arc<ArcSwap<Live>>;

pub fn new_live(config: Config) -> LiveConfig {
    Arc::new(ArcSwap::from_pointee(Live {
        config,
        generation: 1,
    }))
}
