use anyhow::{anyhow, Context as _};
use aya_build::{Package, Toolchain};

fn main() -> anyhow::Result<()> {
    // The nightly must use the same LLVM major as bpf-linker (see scripts/bootstrap.sh).
    println!("cargo:rerun-if-env-changed=XDP_FASTPATH_NIGHTLY");
    let toolchain = std::env::var("XDP_FASTPATH_NIGHTLY").ok();
    let cargo_metadata::Metadata { packages, .. } = cargo_metadata::MetadataCommand::new()
        .no_deps()
        .exec()
        .context("cargo metadata")?;
    let ebpf = packages
        .into_iter()
        .find(|p| p.name.as_str() == "xdp-ebpf")
        .ok_or_else(|| anyhow!("xdp-ebpf package not found"))?;
    let root_dir = ebpf
        .manifest_path
        .parent()
        .ok_or_else(|| anyhow!("xdp-ebpf manifest has no parent directory"))?;
    aya_build::build_ebpf(
        [Package {
            name: ebpf.name.as_str(),
            root_dir: root_dir.as_str(),
            ..Package::default()
        }],
        toolchain.as_deref().map_or(Toolchain::Nightly, Toolchain::Custom),
    )
    .context("building the eBPF object (needs bpf-linker and the nightly toolchain: run scripts/bootstrap.sh)")
}
