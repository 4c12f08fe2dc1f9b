//! Delivery to consumers' callback URLs (SPEC §5): the retry schedule, how one attempt's result
//! is classified, and the guard on where callbacks may go.

pub mod outcome;
pub mod schedule;
pub mod ssrf;
