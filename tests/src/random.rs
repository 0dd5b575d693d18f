//! Seeded randomness for the fuzz and fault tests: a failing run prints its seed, and the
//! same seed replays it.

use std::time::{SystemTime, UNIX_EPOCH};

/// splitmix64: small, seeded, replayable.
pub struct Rng(pub u64);

impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
}

/// A number from the environment, decimal or `0x` hexadecimal.
#[must_use]
pub fn env_u64(name: &str) -> Option<u64> {
    let value = std::env::var(name).ok()?;
    let value = value.trim();
    value.strip_prefix("0x").map_or_else(
        || value.parse().ok(),
        |hex| u64::from_str_radix(hex, 16).ok(),
    )
}

/// The seed in `name`, or one from the clock.
#[must_use]
pub fn seed(name: &str) -> u64 {
    env_u64(name).unwrap_or_else(|| {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(1, |d| d.as_secs() ^ (u64::from(d.subsec_nanos()) << 32))
    })
}
