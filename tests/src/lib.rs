//! Cross-crate tests: the deterministic simulation (`sim`) lives here as a
//! library so its tests (and a failing seed) can be run on their own; the
//! multi-process and network-namespace tests are in `tests/`.

pub mod faults;
#[cfg(test)]
mod operator_rounds;
pub mod sim;
