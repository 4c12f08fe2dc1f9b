//! What the daemon tells about itself: Prometheus metrics and log output, a leaf that every
//! stage records into.

pub mod logging;
pub mod metrics;
mod process;
