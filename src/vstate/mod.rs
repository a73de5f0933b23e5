//! KVM state: the VM file descriptor and memory slots, guest memory, and the vCPU threads.

pub mod memory;
pub mod prepared;
pub mod syscall_repair;
pub mod vcpu;
pub mod vcpu_control;
pub mod vcpu_state;
pub mod vm;
pub mod vm_state;
