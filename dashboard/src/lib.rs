//! The operators' dashboard (HTTP routes, pages, SSE, JSON API), mounted by
//! `replica`. Built in the dashboard issue; until then this crate has no
//! code.
