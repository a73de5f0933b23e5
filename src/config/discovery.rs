//! How the guest learns about its virtio-mmio devices: on the kernel command line
//! (`virtio_mmio.device=`), in the ACPI DSDT (`LNRO0005` devices), or both.

use clap::ValueEnum;

/// Where virtio-mmio devices are announced.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum VirtioDiscovery {
    /// The default: both, so kernels with either mechanism (or `acpi=off`) find the devices.
    #[default]
    Auto,
    /// Only `virtio_mmio.device=4K@ADDR:IRQ` on the command line (kernels without ACPI).
    Cmdline,
    /// Only the DSDT (stock distribution kernels lack command-line discovery).
    Acpi,
    /// Both.
    Both,
}

impl VirtioDiscovery {
    /// Whether the command line announces the devices.
    pub fn cmdline(self) -> bool {
        !matches!(self, VirtioDiscovery::Acpi)
    }

    /// Whether the DSDT announces the devices.
    pub fn acpi(self) -> bool {
        !matches!(self, VirtioDiscovery::Cmdline)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_virtio_discovery_default_is_auto_meaning_both() {
        let d = VirtioDiscovery::default();
        assert_eq!(d, VirtioDiscovery::Auto);
        assert!(d.cmdline() && d.acpi());
        assert!(VirtioDiscovery::Both.cmdline() && VirtioDiscovery::Both.acpi());
    }

    #[test]
    fn test_virtio_discovery_single_mechanism_excludes_other() {
        assert!(VirtioDiscovery::Cmdline.cmdline() && !VirtioDiscovery::Cmdline.acpi());
        assert!(!VirtioDiscovery::Acpi.cmdline() && VirtioDiscovery::Acpi.acpi());
    }
}
