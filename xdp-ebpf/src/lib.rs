//! Build-dependency shim: lets cargo rebuild xdp-ctl when this crate changes.
#![no_std]
