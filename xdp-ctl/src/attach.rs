//! The paths the CLI, the controller and `ops` use for the datapath and the pod side: see
//! `crate::datapath` and `crate::pod`.
pub use crate::{datapath::*, pod::refresh_peers};
