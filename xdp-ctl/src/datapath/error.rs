//! The errors of loading, attaching and detaching the datapath and of the pod side: one enum
//! (aya's style), whose variants say what failed and keep the cause as their `source`, so that
//! callers can match on them and `{:#}` through anyhow prints the whole chain.
use std::{io, path::PathBuf};

use aya::{
    maps::{xdp::XdpMapError, MapError},
    programs::ProgramError,
    EbpfError,
};
use thiserror::Error;

use crate::pin::PinError;

#[derive(Debug, Error)]
pub enum Error {
    #[error("no interface given")]
    NoInterface,
    #[error("unknown interface {0}")]
    UnknownInterface(String),
    #[error("interface {0} given twice")]
    GivenTwice(String),
    #[error(
        "{iface} is not a veth (kind: {kind}); xdp-fastpath attaches to the host side of pod veths"
    )]
    NotVeth { iface: String, kind: String },
    #[error("{0}: the kernel reports no veth peer")]
    NoPeer(String),
    #[error(
        "cannot find the network namespace of {iface}'s peer (netns id {nsid}): it is not under \
         /run/netns and no process runs in it; name it with `ip netns attach NAME PID` and retry"
    )]
    PeerNamespaceNotFound { iface: String, nsid: i32 },
    #[error(
        "{iface} is attached as {attached}; detach it first to attach it as {asked} (an \
         interface is either a pod's host veth or an uplink)"
    )]
    OtherRole {
        iface: String,
        attached: &'static str,
        asked: &'static str,
    },
    #[error(
        "{0} has no Ethernet address; an uplink must be an Ethernet interface (overlay and \
         tunnel devices stay on the kernel path)"
    )]
    UplinkNotEthernet(String),
    #[error("{iface} is attached in {mode} mode; detach it first to change the mode")]
    OtherMode { iface: String, mode: &'static str },
    #[error(
        "{iface} already runs another XDP program (id {id}) that xdp-ctl did not attach; detach \
         it first (`ip link set dev {iface} xdp off`)"
    )]
    ForeignXdp { iface: String, id: u32 },
    #[error("{ifaces} is not attached (nothing is attached under {})", pin_dir.display())]
    NothingAttached { ifaces: String, pin_dir: PathBuf },
    #[error("{0} is not attached by xdp-ctl")]
    NotAttached(String),
    #[error("program {0} missing from the eBPF object")]
    MissingProgram(&'static str),
    #[error("loading the eBPF object")]
    Load(#[source] EbpfError),
    /// The kernel refused the attach; `hint` says what the user can do, when we know.
    #[error("attaching the {datapath} program{}", hint.as_ref().map(|h| format!(": {h}")).unwrap_or_default())]
    Attach {
        datapath: &'static str,
        hint: Option<String>,
        #[source]
        source: ProgramError,
    },
    #[error(
        "the kernel attached without a bpf_link (netlink fallback); XDP links need Linux 5.9+"
    )]
    NoXdpLink,
    #[error("the kernel attached without a TCX link")]
    NoTcxLink,
    /// Pinning or unpinning a link; `what` names the operation.
    #[error("{what} {}", path.display())]
    LinkPin {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: aya::pin::PinError,
    },
    #[error("{what}")]
    Program {
        what: String,
        #[source]
        source: ProgramError,
    },
    #[error("{what}")]
    Map {
        what: String,
        #[source]
        source: MapError,
    },
    #[error("{what}")]
    XdpMap {
        what: String,
        #[source]
        source: XdpMapError,
    },
    #[error("{what}")]
    Io {
        what: String,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    PinDir(#[from] PinError),
    /// From the typed maps (`crate::maps`), which report with anyhow.
    #[error(transparent)]
    Maps(#[from] anyhow::Error),
    /// `context` failed because of `source`.
    #[error("{context}")]
    Context {
        context: String,
        #[source]
        source: Box<Error>,
    },
}

impl Error {
    /// This error and its causes, outermost first, joined as anyhow's `{:#}` prints them (for
    /// logs; the `Display` of a variant is only its own part).
    pub fn chain(&self) -> String {
        let mut out = self.to_string();
        let mut next = std::error::Error::source(self);
        while let Some(e) = next {
            out.push_str(": ");
            out.push_str(&e.to_string());
            next = e.source();
        }
        out
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// An error that becomes an [`Error`] once we say what we were doing.
pub trait IntoError {
    fn into_error(self, what: String) -> Error;
}

impl IntoError for io::Error {
    fn into_error(self, what: String) -> Error {
        Error::Io { what, source: self }
    }
}

impl IntoError for MapError {
    fn into_error(self, what: String) -> Error {
        Error::Map { what, source: self }
    }
}

impl IntoError for XdpMapError {
    fn into_error(self, what: String) -> Error {
        Error::XdpMap { what, source: self }
    }
}

impl IntoError for ProgramError {
    fn into_error(self, what: String) -> Error {
        Error::Program { what, source: self }
    }
}

impl IntoError for Error {
    fn into_error(self, context: String) -> Error {
        Error::Context {
            context,
            source: Box::new(self),
        }
    }
}

/// `.context()` / `.with_context()` for the errors of this module, as anyhow has them.
pub trait ResultExt<T> {
    fn with_context<S: Into<String>>(self, what: impl FnOnce() -> S) -> Result<T>;

    fn context(self, what: &str) -> Result<T>
    where
        Self: Sized,
    {
        self.with_context(|| what)
    }
}

impl<T, E: IntoError> ResultExt<T> for std::result::Result<T, E> {
    fn with_context<S: Into<String>>(self, what: impl FnOnce() -> S) -> Result<T> {
        self.map_err(|e| e.into_error(what().into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_reads_like_anyhow() {
        let e: Result<()> = Err(io::Error::from_raw_os_error(libc::ENODEV))
            .with_context(|| "looking up ifindex 7")
            .with_context(|| "detaching xfph1");
        let e = e.unwrap_err();
        assert!(
            matches!(&e, Error::Context { source, .. } if matches!(**source, Error::Io { .. }))
        );
        assert_eq!(e.to_string(), "detaching xfph1");
        assert!(
            e.chain()
                .starts_with("detaching xfph1: looking up ifindex 7: No such device"),
            "{}",
            e.chain()
        );
        assert_eq!(
            format!("{:#}", anyhow::Error::from(e)),
            "detaching xfph1: looking up ifindex 7: No such device (os error 19)"
        );
    }
}
