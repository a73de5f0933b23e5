//! What saving and restoring device state share: the error a restore reports, and the version
//! check every saved struct goes through. Each device's state is a plain serializable struct with
//! a `version: u16` field, holding guest-visible state only (never a host fd or mapping): a
//! restore applies it to a device freshly built from the same configuration.

/// Why a saved state cannot be restored.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// The state was saved in a layout this build does not read.
    #[error("Saved {what} state has version {found}; this Ember reads version {supported}")]
    Version {
        /// Which device.
        what: &'static str,
        /// The saved version.
        found: u16,
        /// The version this build reads.
        supported: u16,
    },
    /// The saved state does not fit the device it is restored into.
    #[error("Saved {what} state does not match the device: {field} differs")]
    Mismatch {
        /// Which device.
        what: String,
        /// What differs.
        field: &'static str,
    },
    /// A saved value is impossible for the device.
    #[error("Saved {what} state is invalid: {reason}")]
    Invalid {
        /// Which device.
        what: String,
        /// Why.
        reason: String,
    },
    /// A handle on a host file could not be duplicated for the restored device.
    #[error("Failed to duplicate a handle of {what}")]
    Io {
        /// Which device.
        what: &'static str,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// Checks that state saved as `found` can be read by code that reads `supported`.
pub fn check_version(what: &'static str, found: u16, supported: u16) -> Result<(), StateError> {
    if found == supported {
        Ok(())
    } else {
        Err(StateError::Version {
            what,
            found,
            supported,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_check_version_refuses_other_versions() {
        assert!(check_version("serial", 1, 1).is_ok());
        let err = check_version("serial", 2, 1).expect_err("newer");
        assert_eq!(
            err.to_string(),
            "Saved serial state has version 2; this Ember reads version 1"
        );
    }
}
