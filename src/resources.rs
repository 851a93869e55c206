//! The host's resources as a node reports them with each heartbeat: one-minute load average and
//! available memory (sysinfo, refreshing memory only), and the memory floor under which a node
//! stops claiming.
//!
//! Must never refresh more than it reports (no process or CPU scans: they cost milliseconds each
//! on a busy host), and never decide anything about tasks itself.

use serde::{Deserialize, Serialize};

/// What a heartbeat carries about the host.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Resources {
    /// One-minute load average.
    pub load1: f64,
    /// Memory available for new processes, in bytes (`MemAvailable` on Linux).
    pub free_memory: u64,
    /// Total memory, in bytes.
    pub total_memory: u64,
}

/// Samples the host; keeps its sysinfo state between calls so a refresh reads memory only.
pub struct Sampler {
    system: sysinfo::System,
}

impl Default for Sampler {
    fn default() -> Self {
        Self::new()
    }
}

impl Sampler {
    pub fn new() -> Sampler {
        Sampler {
            system: sysinfo::System::new(),
        }
    }

    /// Reads memory and load now.
    pub fn sample(&mut self) -> Resources {
        self.system.refresh_memory();
        Resources {
            load1: sysinfo::System::load_average().one,
            free_memory: self.system.available_memory(),
            total_memory: self.system.total_memory(),
        }
    }
}

/// Whether a node with this floor (bytes; 0 = no floor) must stop claiming.
pub fn under_floor(resources: &Resources, floor: u64) -> bool {
    floor > 0 && resources.free_memory < floor
}

/// Parses a byte size: a plain number of bytes, or a number with a unit `KiB MiB GiB TiB`
/// (powers of 1024) or `KB MB GB TB` (powers of 1000), e.g. `512MiB`, `2 GB`.
pub fn parse_bytes(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: f64 = number
        .parse()
        .map_err(|_| format!("`{text}` is not a size (e.g. 512MiB, 2GB, 1048576)"))?;
    let factor: f64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "k" | "kb" => 1e3,
        "m" | "mb" => 1e6,
        "g" | "gb" => 1e9,
        "t" | "tb" => 1e12,
        "kib" => 1024.0,
        "mib" => 1024.0 * 1024.0,
        "gib" => 1024.0 * 1024.0 * 1024.0,
        "tib" => 1024.0 * 1024.0 * 1024.0 * 1024.0,
        other => {
            return Err(format!(
                "unknown size unit `{other}` (use KiB, MiB, GiB, TiB, KB, MB, GB, TB)"
            ))
        }
    };
    let bytes = number * factor;
    if !bytes.is_finite() || bytes < 0.0 || bytes > u64::MAX as f64 {
        return Err(format!("`{text}` is out of range"));
    }
    Ok(bytes as u64)
}

/// Serde helper: a byte size as a number or a string with a unit.
pub mod bytes_serde {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(value: &u64, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(*value)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Number(u64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Number(n) => Ok(n),
            Raw::Text(t) => super::parse_bytes(&t).map_err(serde::de::Error::custom),
        }
    }
}

/// Serde helper: an optional byte size (`bytes_serde` when present).
pub mod opt_bytes_serde {
    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(value: &Option<u64>, s: S) -> Result<S::Ok, S::Error> {
        match value {
            Some(v) => s.serialize_u64(*v),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
        super::bytes_serde::deserialize(d).map(Some)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_bytes("0"), Ok(0));
        assert_eq!(parse_bytes("512MiB"), Ok(512 * 1024 * 1024));
        assert_eq!(parse_bytes("2 GB"), Ok(2_000_000_000));
        assert_eq!(parse_bytes("1.5KiB"), Ok(1536));
        assert!(parse_bytes("lots").is_err());
        assert!(parse_bytes("5 parsecs").is_err());
    }

    #[test]
    fn sampling_reads_memory() {
        let r = Sampler::new().sample();
        assert!(
            r.total_memory > 0 && r.free_memory <= r.total_memory,
            "{r:?}"
        );
        assert!(under_floor(&r, u64::MAX));
        assert!(!under_floor(&r, 0));
    }
}
