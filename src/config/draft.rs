//! `VmConfigDraft`: a `VmConfig` being assembled piece by piece (the API before InstanceStart,
//! the config file, the CLI), each piece checked as it arrives, the whole checked at the end.

use super::boot::BootSourceBody;
use super::drive::{self, DriveBody};
use super::entropy::EntropyBody;
use super::machine::MachineConfigBody;
use super::net::{self, NetBody};
use super::vsock::VsockBody;
use super::{
    BootConfig, ConfigError, DriveConfig, EntropyConfig, HostLimits, MachineConfig, NetConfig,
    SerialConfig, VirtioDiscovery, VmConfig, VsockConfig,
};
use crate::host::CompatMode;

/// A configuration that may still lack its boot source.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct VmConfigDraft {
    /// vCPUs and memory.
    pub machine: MachineConfig,
    /// Kernel, initrd, command line; `None` until given.
    pub boot: Option<BootConfig>,
    /// Serial console routing.
    pub serial: SerialConfig,
    /// Drives, in guest order.
    pub drives: Vec<DriveConfig>,
    /// Network interfaces, in guest order.
    pub nets: Vec<NetConfig>,
    /// The entropy device, if any.
    pub entropy: Option<EntropyConfig>,
    /// The vsock device, if any.
    pub vsock: Option<VsockConfig>,
    /// Software-nested KVM compatibility policy.
    pub pvm_compat: CompatMode,
    /// Where the guest learns about its virtio devices.
    pub virtio_discovery: VirtioDiscovery,
}

impl From<&VmConfig> for VmConfigDraft {
    fn from(config: &VmConfig) -> Self {
        VmConfigDraft {
            machine: config.machine,
            boot: Some(config.boot.clone()),
            serial: config.serial.clone(),
            drives: config.drives.clone(),
            nets: config.nets.clone(),
            entropy: config.entropy,
            vsock: config.vsock.clone(),
            pvm_compat: config.pvm_compat,
            virtio_discovery: config.virtio_discovery,
        }
    }
}

impl VmConfigDraft {
    /// The finished configuration: unnamed drives and interfaces get their ids, lists are
    /// checked. Host limits and files are checked again by `VmConfig::validate` at build time.
    pub fn build(&self) -> Result<VmConfig, ConfigError> {
        let boot = self.boot.clone().ok_or(ConfigError::NoBootSource)?;
        let mut drives = self.drives.clone();
        drive::finalize_drives(&mut drives)?;
        let mut nets = self.nets.clone();
        net::finalize_nets(&mut nets)?;
        Ok(VmConfig {
            machine: self.machine,
            boot,
            serial: self.serial.clone(),
            drives,
            nets,
            entropy: self.entropy,
            vsock: self.vsock.clone(),
            pvm_compat: self.pvm_compat,
            virtio_discovery: self.virtio_discovery,
        })
    }

    /// `PUT /machine-config`: replaces the machine shape after checking it.
    pub fn put_machine(&mut self, body: &MachineConfigBody) -> Result<(), ConfigError> {
        let (machine, compat) = body.to_config()?;
        // KVM's own vCPU limit is checked at InstanceStart, when /dev/kvm is open.
        machine.validate(&HostLimits::read(usize::MAX))?;
        self.machine = machine;
        self.pvm_compat = compat;
        Ok(())
    }

    /// `PUT /boot-source`: replaces the boot source after checking its files.
    pub fn put_boot(&mut self, body: &BootSourceBody) -> Result<(), ConfigError> {
        let boot = BootConfig::from(body);
        boot.validate()?;
        self.boot = Some(boot);
        Ok(())
    }

    /// `PUT /drives/{id}`: adds a drive, or replaces the one with the same id.
    pub fn put_drive(&mut self, body: &DriveBody) -> Result<(), ConfigError> {
        let new = DriveConfig::from(body);
        new.validate()?;
        let mut drives = self.drives.clone();
        match drives.iter_mut().find(|d| d.id == new.id) {
            Some(slot) => *slot = new,
            None => drives.push(new),
        }
        drive::validate_drives(&drives)?;
        self.drives = drives;
        Ok(())
    }

    /// `PUT /network-interfaces/{id}`: adds an interface, or replaces the one with the same id.
    pub fn put_net(&mut self, body: &NetBody) -> Result<(), ConfigError> {
        let new = NetConfig::from(body);
        let mut nets = self.nets.clone();
        match nets.iter_mut().find(|n| n.id == new.id) {
            Some(slot) => *slot = new,
            None => nets.push(new),
        }
        net::validate_nets(&nets)?;
        self.nets = nets;
        Ok(())
    }

    /// `PUT /entropy`: adds the entropy device (or replaces its settings).
    pub fn put_entropy(&mut self, body: &EntropyBody) -> Result<(), ConfigError> {
        self.entropy = Some(EntropyConfig::from(body));
        Ok(())
    }

    /// `PUT /vsock`: adds the vsock device (or replaces it).
    pub fn put_vsock(&mut self, body: &VsockBody) -> Result<(), ConfigError> {
        let vsock = VsockConfig::from(body);
        vsock.validate()?;
        self.vsock = Some(vsock);
        Ok(())
    }

    /// `PUT /serial`: where the console goes.
    pub fn put_serial(&mut self, body: &super::serial::SerialBody) -> Result<(), ConfigError> {
        let serial = SerialConfig::try_from(body)?;
        serial.validate()?;
        self.serial = serial;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn existing_file() -> PathBuf {
        std::env::current_exe().expect("test binary path")
    }

    #[test]
    fn test_draft_without_boot_source_does_not_build() {
        assert_eq!(
            VmConfigDraft::default().build(),
            Err(ConfigError::NoBootSource)
        );
    }

    #[test]
    fn test_draft_put_boot_then_build() {
        let mut draft = VmConfigDraft::default();
        let body = BootSourceBody {
            kernel_image_path: existing_file(),
            initrd_path: None,
            boot_args: Some("console=ttyS0".into()),
            boot_protocol: Default::default(),
        };
        draft.put_boot(&body).expect("valid");
        let config = draft.build().expect("complete");
        assert_eq!(config.boot.cmdline, "console=ttyS0");
        assert_eq!(config.machine, MachineConfig::default());
    }

    #[test]
    fn test_draft_put_boot_missing_kernel_rejected() {
        let mut draft = VmConfigDraft::default();
        let body = BootSourceBody {
            kernel_image_path: PathBuf::from("/nonexistent/kernel"),
            initrd_path: None,
            boot_args: None,
            boot_protocol: Default::default(),
        };
        assert!(draft.put_boot(&body).is_err());
        assert_eq!(draft.boot, None);
    }

    #[test]
    fn test_draft_put_machine_zero_vcpus_rejected() {
        let mut draft = VmConfigDraft::default();
        let body = MachineConfigBody {
            vcpu_count: 0,
            mem_size_mib: 64,
            smt: false,
            pvm_compat: CompatMode::Auto,
            track_dirty_pages: false,
        };
        assert!(draft.put_machine(&body).is_err());
        assert_eq!(draft.machine, MachineConfig::default());
    }

    #[test]
    fn test_draft_put_drive_replaces_same_id() {
        let mut draft = VmConfigDraft::default();
        let mut body = DriveBody {
            drive_id: "rootfs".into(),
            path_on_host: existing_file(),
            is_root_device: true,
            is_read_only: false,
            shared: false,
            ..Default::default()
        };
        draft.put_drive(&body).expect("first");
        body.is_read_only = true;
        draft.put_drive(&body).expect("replace");
        assert_eq!(draft.drives.len(), 1);
        assert!(draft.drives[0].readonly);
        body.drive_id = "second".into();
        assert!(draft.put_drive(&body).is_err(), "two root drives");
    }

    #[test]
    fn test_draft_put_net_duplicate_tap_rejected() {
        let mut draft = VmConfigDraft::default();
        let body = |id: &str| NetBody {
            iface_id: id.into(),
            host_dev_name: "tap0".into(),
            guest_mac: None,
            ..Default::default()
        };
        draft.put_net(&body("a")).expect("first");
        assert!(draft.put_net(&body("b")).is_err());
        assert_eq!(draft.nets.len(), 1);
    }
}
