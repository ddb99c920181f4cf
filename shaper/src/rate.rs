//! Rates in bytes per second, parsed from human units (`512KiB`, `2MiB`, `10MB`, `80Mbit`, `unlimited`).

use std::fmt;
use std::str::FromStr;

/// A bandwidth in bytes per second, or unlimited.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Rate {
    /// No cap.
    Unlimited,
    /// At most this many bytes per second (never zero).
    BytesPerSec(u64),
}

/// Why a rate string was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ParseRateError {
    /// The string was empty.
    #[error("empty rate")]
    Empty,
    /// No leading number.
    #[error("rate {0:?} has no number (examples: 512KiB, 2MiB, 10MB, 80Mbit, unlimited)")]
    NoNumber(String),
    /// The unit is not one of the known ones.
    #[error("unknown unit {0:?} (use B, KB, MB, GB, KiB, MiB, GiB, kbit, Mbit, Gbit)")]
    UnknownUnit(String),
    /// Zero bytes per second (use `unlimited` for no cap).
    #[error("rate must be greater than zero (use \"unlimited\" for no cap)")]
    Zero,
    /// More than `u64::MAX` bytes per second.
    #[error("rate {0:?} is too large")]
    Overflow(String),
}

impl Rate {
    /// Bytes per second, `None` when unlimited.
    pub fn bytes_per_sec(self) -> Option<u64> {
        match self {
            Rate::Unlimited => None,
            Rate::BytesPerSec(b) => Some(b),
        }
    }
}

impl FromStr for Rate {
    type Err = ParseRateError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if s.is_empty() {
            return Err(ParseRateError::Empty);
        }
        if s.eq_ignore_ascii_case("unlimited") {
            return Ok(Rate::Unlimited);
        }
        let split = s
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(s.len());
        let (num, unit) = s.split_at(split);
        if num.is_empty() {
            return Err(ParseRateError::NoNumber(s.to_string()));
        }
        let value: f64 = num
            .parse()
            .map_err(|_| ParseRateError::NoNumber(s.to_string()))?;
        let unit = unit.trim();
        // Bytes-per-second multipliers; "bit" units divide by 8.
        let mult: f64 = match unit {
            "" | "B" | "b" | "B/s" => 1.0,
            "K" | "KB" | "kB" | "k" => 1e3,
            "M" | "MB" => 1e6,
            "G" | "GB" => 1e9,
            "KiB" | "Ki" => 1024.0,
            "MiB" | "Mi" => 1024.0 * 1024.0,
            "GiB" | "Gi" => 1024.0 * 1024.0 * 1024.0,
            "bit" => 1.0 / 8.0,
            "kbit" | "Kbit" => 1e3 / 8.0,
            "Mbit" | "mbit" => 1e6 / 8.0,
            "Gbit" | "gbit" => 1e9 / 8.0,
            other => return Err(ParseRateError::UnknownUnit(other.to_string())),
        };
        // Whole numbers in whole-byte units are exact (f64 would round past 2^53).
        if !num.contains('.') && mult >= 1.0 && mult.fract() == 0.0 {
            let exact = num
                .parse::<u64>()
                .ok()
                .and_then(|n| n.checked_mul(mult as u64));
            return match exact {
                Some(0) => Err(ParseRateError::Zero),
                Some(b) => Ok(Rate::BytesPerSec(b)),
                None => Err(ParseRateError::Overflow(s.to_string())),
            };
        }
        let bytes = value * mult;
        if !bytes.is_finite() || bytes >= u64::MAX as f64 {
            return Err(ParseRateError::Overflow(s.to_string()));
        }
        let bytes = bytes.round() as u64;
        if bytes == 0 {
            return Err(ParseRateError::Zero);
        }
        Ok(Rate::BytesPerSec(bytes))
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Rate::Unlimited => f.write_str("unlimited"),
            Rate::BytesPerSec(b) => {
                const UNITS: [(u64, &str); 3] =
                    [(1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")];
                for (size, name) in UNITS {
                    if b >= size && b % size == 0 {
                        return write!(f, "{}{}", b / size, name);
                    }
                }
                write!(f, "{b}B")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units() {
        assert_eq!("512KiB".parse(), Ok(Rate::BytesPerSec(512 * 1024)));
        assert_eq!("2MiB".parse(), Ok(Rate::BytesPerSec(2 << 20)));
        assert_eq!("1GiB".parse(), Ok(Rate::BytesPerSec(1 << 30)));
        assert_eq!("10MB".parse(), Ok(Rate::BytesPerSec(10_000_000)));
        assert_eq!("80Mbit".parse(), Ok(Rate::BytesPerSec(10_000_000)));
        assert_eq!("unlimited".parse(), Ok(Rate::Unlimited));
        assert_eq!("0".parse::<Rate>(), Err(ParseRateError::Zero));
        assert!("fast".parse::<Rate>().is_err());
        assert!("3parsecs".parse::<Rate>().is_err());
    }

    #[test]
    fn display_round_trips() {
        for s in ["512KiB", "2MiB", "1GiB", "1000B", "unlimited"] {
            let r: Rate = s.parse().unwrap();
            assert_eq!(r.to_string(), s);
            assert_eq!(r.to_string().parse::<Rate>().unwrap(), r);
        }
    }
}
