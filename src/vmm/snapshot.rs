//! `PUT /snapshot/create` on a paused VM: every vCPU's state (a `SaveState` request answered by
//! its parked thread), the irqchip, PIT and clock, every device, the configuration and the
//! memory layout into the snapshot file, guest RAM into the memory file.

use std::time::{Duration, Instant};

use super::Controller;
use crate::api::ApiResponse;
use crate::config::VmConfigDraft;
use crate::config::file::{ConfigDocument, ProcessSettings};
use crate::snapshot::params::{SnapshotCreateBody, SnapshotType};
use crate::snapshot::{self, MemoryContents, MemoryLayout, Snapshot, SnapshotPaths};
use crate::vstate::vm_state::VmState;

/// How long each parked vCPU may take to answer a state request.
const SAVE_STATE_TIMEOUT: Duration = Duration::from_secs(2);

impl Controller {
    /// Writes a full or diff snapshot of the paused VM, or says why not.
    pub(super) fn create_snapshot(&mut self, body: &SnapshotCreateBody) -> ApiResponse {
        let contents = match (body.snapshot_type, &self.diff_base) {
            (SnapshotType::Full, _) => MemoryContents::Full,
            (SnapshotType::Diff, Some(pagemap)) => MemoryContents::Diff(pagemap),
            (SnapshotType::Diff, None) => {
                return ApiResponse::bad_request(
                    "A diff snapshot needs a VM restored from a snapshot (the diff is against its memory file): take a Full snapshot.",
                );
            }
        };
        if !self.paused {
            return ApiResponse::bad_request(
                "The microVM is running: pause it (PATCH /vm) before creating a snapshot.",
            );
        }
        let Some(config) = &self.config else {
            return ApiResponse::error(500, "The configuration is not known.");
        };
        let started = Instant::now();
        let mut vcpus = Vec::with_capacity(self.handles.len());
        for handle in &self.handles {
            match handle.save_state(SAVE_STATE_TIMEOUT) {
                Ok(state) => vcpus.push(state),
                Err(e) => {
                    log::error!("Snapshot: {e}");
                    return ApiResponse::error(500, &format!("Cannot save the vCPU state: {e}."));
                }
            }
        }
        let vm = match VmState::save(self.vm.fd()) {
            Ok(vm) => vm,
            Err(e) => {
                let message = format!("Cannot save the VM state: {}", crate::error_chain(&e));
                log::error!("{message}");
                return ApiResponse::error(500, &format!("{message}."));
            }
        };
        let state = Snapshot {
            // The machine only: the logger and metrics belong to the process that restores.
            config: ConfigDocument::from_draft(
                &VmConfigDraft::from(config),
                ProcessSettings::default(),
            ),
            memory: MemoryLayout::of(&self.mem),
            vcpus,
            vm,
            devices: self.devices.save(),
        };
        let paths = SnapshotPaths {
            snapshot: body.snapshot_path.clone(),
            mem: body.mem_file_path.clone(),
        };
        match snapshot::write(&state, &self.mem, &paths, contents) {
            Ok(bytes) => {
                let elapsed = started.elapsed();
                // Firecracker's names for these latencies.
                let name = match body.snapshot_type {
                    SnapshotType::Full => "full_create_snapshot",
                    SnapshotType::Diff => "diff_create_snapshot",
                };
                crate::metrics::record_latency(name, elapsed);
                log::info!(
                    "{:?} snapshot written to {} and {} ({} KiB of guest memory) in {} ms",
                    body.snapshot_type,
                    paths.snapshot.display(),
                    paths.mem.display(),
                    bytes >> 10,
                    elapsed.as_millis()
                );
                ApiResponse::no_content()
            }
            Err(e) => {
                let message = format!("Cannot write the snapshot: {}", crate::error_chain(&e));
                log::error!("{message}");
                ApiResponse::bad_request(&format!("{message}."))
            }
        }
    }
}
