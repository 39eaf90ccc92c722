//! What the running kernel offers, for defaults.

use aya::util::KernelVersion;

use crate::attach::Datapath;

/// TCX (`BPF_TCX_INGRESS` links), which the `tc` datapath attaches with, landed in Linux 6.6.
pub const TCX_SINCE: KernelVersion = KernelVersion::new(6, 6, 0);

/// The datapath to use when none is asked for, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DefaultDatapath {
    pub datapath: Datapath,
    /// Set when the preferred `tc` is not available: what to tell the user.
    pub fallback: Option<String>,
}

/// `tc` where the kernel has TCX: it keeps the skb with its checksum state and GSO, and costs
/// the pods nothing, while XDP on a veth turns off the pods' tx checksumming (and with it their
/// TSO) for all their traffic; the benchmark (bench/README.md) has it ahead or level on every
/// figure. `xdp` otherwise, with a message.
pub fn default_datapath() -> DefaultDatapath {
    choose(KernelVersion::current().ok())
}

/// The choice for a kernel version (`None`: unknown).
pub fn choose(kernel: Option<KernelVersion>) -> DefaultDatapath {
    match kernel {
        Some(v) if v >= TCX_SINCE => DefaultDatapath {
            datapath: Datapath::Tc,
            fallback: None,
        },
        Some(v) => DefaultDatapath {
            datapath: Datapath::Xdp,
            fallback: Some(format!(
                "kernel {v} has no TCX (Linux 6.6+), so the default datapath is xdp \
                 (pods lose tx checksum offload and TSO); pass --datapath xdp to silence this"
            )),
        },
        None => DefaultDatapath {
            datapath: Datapath::Xdp,
            fallback: Some(
                "could not read the kernel version to probe for TCX (Linux 6.6+), so the \
                 default datapath is xdp; pass --datapath tc or --datapath xdp to choose"
                    .to_owned(),
            ),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tc_from_6_6_xdp_before_and_when_unknown() {
        assert_eq!(
            choose(Some(KernelVersion::new(6, 6, 0))).datapath,
            Datapath::Tc
        );
        assert_eq!(
            choose(Some(KernelVersion::new(6, 18, 44))).datapath,
            Datapath::Tc
        );
        let old = choose(Some(KernelVersion::new(6, 5, 13)));
        assert_eq!(old.datapath, Datapath::Xdp);
        assert!(old.fallback.unwrap().contains("no TCX"));
        let unknown = choose(None);
        assert_eq!(unknown.datapath, Datapath::Xdp);
        assert!(unknown.fallback.is_some());
    }
}
