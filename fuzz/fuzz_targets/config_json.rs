//! The JSON config file (`--config-file`): parsing with field-path errors, the per-resource
//! checks, building the final `VmConfig` and validating it against fixed host limits. Then the
//! contract `GET /vm/config` relies on: the document Ember writes for an accepted config reads
//! back as the same config.
#![no_main]

use ember::config::HostLimits;
use ember::config::file::{ConfigDocument, parse};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &[u8]| {
    let Ok((draft, process)) = parse(text) else {
        return;
    };
    if let Ok(config) = draft.build() {
        let limits = HostLimits {
            max_vcpus: 32,
            host_memory: 16 << 30,
        };
        let _ = config.validate(&limits);
    }
    let written = serde_json::to_vec(&ConfigDocument::from_draft(&draft, process.clone()))
        .expect("a config document serialises");
    let again = parse(&written).expect("Ember reads back the document it writes");
    assert_eq!(again, (draft, process), "the round trip changed the config");
});
