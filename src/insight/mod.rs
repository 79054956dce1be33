//! Insight: what the results mean. [`levels`] judges one round (`up`,
//! `slow`, `lossy`, `down`) against absolute levels and the agent's own
//! baseline; [`verdict`] compares agents to tell whose fault a bad view is
//! ("is it me or the target?") and keeps verdicts steady.

pub mod levels;
pub mod verdict;

pub use levels::Levels;

#[cfg(test)]
mod tests;
