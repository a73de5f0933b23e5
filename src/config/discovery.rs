//! How the guest learns about its virtio-mmio devices: on the kernel command line
//! (`virtio_mmio.device=`), in the ACPI DSDT (`LNRO0005` devices), or both.
//!
//! `auto` (the default) announces each device once: in the DSDT, unless the command line turns
//! ACPI off (`acpi=off`), then on the command line. A kernel that has both mechanisms and sees a
//! device twice registers it twice; the second registration of the same window fails as busy
//! ("probe of virtio-mmio.N failed with error -16" on every boot). The DSDT is the default
//! because stock distribution kernels have ACPI but not `CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES`,
//! and the reference kernel (guest-images/kernel/ember.config) has both; QEMU's microvm machine
//! makes the same choice. Kernels without ACPI need `acpi=off` or `--virtio-discovery cmdline`.

use clap::ValueEnum;

/// Where virtio-mmio devices are announced.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum VirtioDiscovery {
    /// The default: the DSDT, or the command line when it has `acpi=off`; never both.
    #[default]
    Auto,
    /// Only `virtio_mmio.device=4K@ADDR:IRQ` on the command line (kernels without ACPI).
    Cmdline,
    /// Only the DSDT (stock distribution kernels lack command-line discovery).
    Acpi,
    /// Both (a kernel with both mechanisms then logs a failed probe per device).
    Both,
}

/// Whether the guest command line `cmdline` turns ACPI off.
fn acpi_off(cmdline: &str) -> bool {
    cmdline.split_whitespace().any(|w| w == "acpi=off")
}

impl VirtioDiscovery {
    /// Whether the command line announces the devices, for a guest booted with `cmdline`.
    pub fn cmdline(self, cmdline: &str) -> bool {
        match self {
            VirtioDiscovery::Auto => acpi_off(cmdline),
            VirtioDiscovery::Cmdline | VirtioDiscovery::Both => true,
            VirtioDiscovery::Acpi => false,
        }
    }

    /// Whether the DSDT announces the devices, for a guest booted with `cmdline`.
    pub fn acpi(self, cmdline: &str) -> bool {
        match self {
            VirtioDiscovery::Auto => !acpi_off(cmdline),
            VirtioDiscovery::Acpi | VirtioDiscovery::Both => true,
            VirtioDiscovery::Cmdline => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CMDLINE: &str = "console=ttyS0 reboot=k panic=1";

    #[test]
    fn test_virtio_discovery_auto_announces_in_acpi_only() {
        let d = VirtioDiscovery::default();
        assert_eq!(d, VirtioDiscovery::Auto);
        assert!(d.acpi(CMDLINE) && !d.cmdline(CMDLINE));
    }

    #[test]
    fn test_virtio_discovery_auto_with_acpi_off_announces_on_cmdline_only() {
        let off = "console=ttyS0 acpi=off";
        let d = VirtioDiscovery::Auto;
        assert!(d.cmdline(off) && !d.acpi(off));
        assert!(!d.cmdline("acpi=offx"));
    }

    #[test]
    fn test_virtio_discovery_explicit_modes_ignore_the_cmdline() {
        for cmdline in [CMDLINE, "acpi=off"] {
            assert!(VirtioDiscovery::Cmdline.cmdline(cmdline));
            assert!(!VirtioDiscovery::Cmdline.acpi(cmdline));
            assert!(!VirtioDiscovery::Acpi.cmdline(cmdline));
            assert!(VirtioDiscovery::Acpi.acpi(cmdline));
            assert!(VirtioDiscovery::Both.cmdline(cmdline) && VirtioDiscovery::Both.acpi(cmdline));
        }
    }
}
