//! The snapshot file's framing: a magic, a format version, the length of the body (the state as
//! JSON) and a CRC-64 over everything before it. A file that does not match in every part is
//! refused as a whole, before any of it is used.
//!
//! ```text
//! offset 0   8 bytes  magic "EMBERSNP"
//!        8   4 bytes  format version (little-endian u32)
//!       12   8 bytes  body length N (little-endian u64)
//!       20   N bytes  body: the `Snapshot` as JSON
//!     20+N   8 bytes  CRC-64/XZ of bytes 0 .. 20+N (little-endian)
//! ```

use std::path::{Path, PathBuf};

/// The first bytes of every snapshot file.
pub const MAGIC: &[u8; 8] = b"EMBERSNP";
/// The format version this build writes and reads.
pub const FORMAT_VERSION: u32 = 1;
/// Bytes before the body.
const HEADER_LEN: usize = 20;
/// The checksum after the body.
const TRAILER_LEN: usize = 8;
/// The largest body Ember reads (a snapshot's state is kilobytes per vCPU and device).
pub const MAX_BODY: u64 = 64 << 20;

/// Why a snapshot file was refused.
#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    /// The file could not be read or written.
    #[error("snapshot file {path}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file does not start with the magic.
    #[error("snapshot file {0}: not an Ember snapshot (bad magic)")]
    Magic(PathBuf),
    /// The file was written in a format this build does not read.
    #[error(
        "snapshot file {path}: format version {found}, this Ember reads version {FORMAT_VERSION}"
    )]
    Version {
        /// The file.
        path: PathBuf,
        /// The version in the file.
        found: u32,
    },
    /// The file is shorter or longer than its header says (truncated, or something appended).
    #[error("snapshot file {path}: {actual} bytes, the header says {expected} (truncated?)")]
    Length {
        /// The file.
        path: PathBuf,
        /// The size the header implies.
        expected: u64,
        /// The size found.
        actual: u64,
    },
    /// The checksum does not match: the file is corrupted.
    #[error(
        "snapshot file {path}: checksum mismatch (file corrupted): stored {stored:#018x}, computed {computed:#018x}"
    )]
    Checksum {
        /// The file.
        path: PathBuf,
        /// The checksum in the file.
        stored: u64,
        /// The checksum of its contents.
        computed: u64,
    },
}

/// The version string `--snapshot-version` and `--describe-snapshot` print (Firecracker's
/// `vMAJOR.MINOR.PATCH` form).
pub fn version_string(version: u32) -> String {
    format!("v{version}.0.0")
}

/// The format version of the snapshot file at `path`, read from its header (magic checked;
/// the rest is not: `--describe-snapshot` also names versions this build cannot load).
pub fn file_version(path: &Path) -> Result<u32, FormatError> {
    use std::io::Read;
    let io = |source| FormatError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut header = [0u8; 12];
    let mut file = std::fs::File::open(path).map_err(io)?;
    let mut got = 0;
    while got < header.len() {
        match file.read(&mut header[got..]).map_err(io)? {
            0 => break,
            n => got += n,
        }
    }
    if got < MAGIC.len() || &header[..MAGIC.len()] != MAGIC {
        return Err(FormatError::Magic(path.to_path_buf()));
    }
    if got < header.len() {
        return Err(FormatError::Length {
            path: path.to_path_buf(),
            expected: (HEADER_LEN + TRAILER_LEN) as u64,
            actual: got as u64,
        });
    }
    Ok(le_u32(&header[8..12]))
}

/// CRC-64/XZ (ECMA-182 polynomial, reflected, initial and final XOR all ones).
pub fn crc64(data: &[u8]) -> u64 {
    const POLY: u64 = 0xc96c_5795_d787_0f42;
    static TABLE: std::sync::OnceLock<[u64; 256]> = std::sync::OnceLock::new();
    let table = TABLE.get_or_init(|| {
        let mut table = [0u64; 256];
        for (i, entry) in table.iter_mut().enumerate() {
            let mut crc = i as u64;
            for _ in 0..8 {
                crc = if crc & 1 == 1 {
                    (crc >> 1) ^ POLY
                } else {
                    crc >> 1
                };
            }
            *entry = crc;
        }
        table
    });
    let crc = data.iter().fold(!0u64, |crc, &byte| {
        table[((crc ^ u64::from(byte)) & 0xff) as usize] ^ (crc >> 8)
    });
    !crc
}

/// The whole file for `body`.
pub fn encode(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + body.len() + TRAILER_LEN);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    out.extend_from_slice(&(body.len() as u64).to_le_bytes());
    out.extend_from_slice(body);
    let crc = crc64(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

fn le_u32(bytes: &[u8]) -> u32 {
    let mut b = [0u8; 4];
    b.copy_from_slice(&bytes[..4]);
    u32::from_le_bytes(b)
}

fn le_u64(bytes: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&bytes[..8]);
    u64::from_le_bytes(b)
}

/// The body of `file` (the contents of the snapshot at `path`), once magic, version, length
/// and checksum all match.
pub fn decode<'a>(path: &Path, file: &'a [u8]) -> Result<&'a [u8], FormatError> {
    let path = || path.to_path_buf();
    if file.len() < MAGIC.len() || &file[..MAGIC.len()] != MAGIC {
        return Err(FormatError::Magic(path()));
    }
    if file.len() < HEADER_LEN {
        return Err(FormatError::Length {
            path: path(),
            expected: (HEADER_LEN + TRAILER_LEN) as u64,
            actual: file.len() as u64,
        });
    }
    let found = le_u32(&file[8..12]);
    if found != FORMAT_VERSION {
        return Err(FormatError::Version {
            path: path(),
            found,
        });
    }
    let body_len = le_u64(&file[12..20]);
    let expected = body_len
        .min(MAX_BODY)
        .saturating_add((HEADER_LEN + TRAILER_LEN) as u64);
    if body_len > MAX_BODY || file.len() as u64 != expected {
        return Err(FormatError::Length {
            path: path(),
            expected: body_len.saturating_add((HEADER_LEN + TRAILER_LEN) as u64),
            actual: file.len() as u64,
        });
    }
    let end = file.len() - TRAILER_LEN;
    let stored = le_u64(&file[end..]);
    let computed = crc64(&file[..end]);
    if stored != computed {
        return Err(FormatError::Checksum {
            path: path(),
            stored,
            computed,
        });
    }
    Ok(&file[HEADER_LEN..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path() -> &'static Path {
        Path::new("s.snap")
    }

    #[test]
    fn test_crc64_xz_check_value() {
        assert_eq!(crc64(b"123456789"), 0x995d_c9bb_df19_39fa);
    }

    #[test]
    fn test_decode_encoded_returns_body() {
        let file = encode(b"{\"a\":1}");
        assert_eq!(decode(path(), &file).expect("valid"), b"{\"a\":1}");
    }

    #[test]
    fn test_decode_truncated_is_length_error() {
        let file = encode(b"some state");
        for cut in [file.len() - 1, file.len() - 9, 21, 12] {
            let err = decode(path(), &file[..cut]).expect_err("truncated");
            assert!(matches!(err, FormatError::Length { .. }), "{cut}: {err}");
        }
    }

    #[test]
    fn test_decode_flipped_bit_is_checksum_error() {
        let file = encode(b"some state");
        for at in [20, 25, file.len() - 1] {
            let mut bad = file.clone();
            bad[at] ^= 0x10;
            let err = decode(path(), &bad).expect_err("corrupted");
            assert!(matches!(err, FormatError::Checksum { .. }), "{at}: {err}");
        }
    }

    #[test]
    fn test_decode_other_version_is_refused_by_name() {
        let mut file = encode(b"x");
        file[8] = 2;
        let err = decode(path(), &file).expect_err("version 2");
        assert!(err.to_string().contains("format version 2"), "{err}");
    }

    #[test]
    fn test_decode_bad_magic_and_empty_are_refused() {
        assert!(matches!(decode(path(), b""), Err(FormatError::Magic(_))));
        let mut file = encode(b"x");
        file[0] = b'X';
        assert!(matches!(decode(path(), &file), Err(FormatError::Magic(_))));
    }

    #[test]
    fn test_decode_huge_declared_length_is_refused() {
        let mut file = encode(b"x");
        file[12..20].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(matches!(
            decode(path(), &file),
            Err(FormatError::Length { .. })
        ));
    }
}
