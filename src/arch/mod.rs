//! Architecture-specific boot code. Only x86_64 is supported; everything that depends on the
//! target architecture lives below this module.

#[cfg(target_arch = "x86_64")]
pub mod x86_64;

#[cfg(target_arch = "x86_64")]
pub use self::x86_64::*;
