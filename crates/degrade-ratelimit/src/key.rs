//! Key extractors: which budget a request spends.
//!
//! The extractors are degrade's one family, [`degrade_core::key`], re-exported here: a request
//! with a key spends that key's budget; requests without one share one keyless budget, so a
//! client cannot escape the limit by leaving its key out. [`Global`] gives every request `None`:
//! one budget for everything. Fleet mode needs a key every host spells the same way: a key type
//! with `Display` (a closure's, `PeerIp`'s), not the per-process [`HashedKey`].
//!
//! ```
//! use degrade_ratelimit::key::{from_fn, KeyExtractor};
//! let by_tenant = from_fn(|req: &(u32, &str)| Some(req.0));
//! assert_eq!(by_tenant.extract(&(7, "/")), Some(7));
//! ```

pub use degrade_core::key::*;
