//! Kubernetes resource quantities (`"100m"`, `"0.5"`, `"64Mi"`, `"1G"`, `"1e3"`): parsing and
//! conversion to millicores and bytes. Values are kept as an exact decimal (`i128` mantissa
//! scaled by 10^-9) for the ranges pods use; it does not reproduce Kubernetes' canonical
//! serialisation.

use std::fmt;

/// A parsed quantity, stored exactly in units of 10^-9 (nano).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Quantity {
    /// The value multiplied by 10^9.
    pub nanos: i128,
}

/// Why a string is not a quantity.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "quantities must match the regular expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'"
)]
pub struct QuantityError;

/// The message Kubernetes gives for a malformed quantity.
pub const QUANTITY_ERROR_MESSAGE: &str =
    "quantities must match the regular expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'";

const NANO: i128 = 1_000_000_000;

impl Quantity {
    /// The value in millicores (or milli-units), rounded up as Kubernetes' `MilliValue` does.
    pub fn millis(&self) -> i128 {
        ceil_div(self.nanos, 1_000_000)
    }

    /// The value in whole units (bytes for memory), rounded up as Kubernetes' `Value` does.
    pub fn value(&self) -> i128 {
        ceil_div(self.nanos, NANO)
    }

    /// Alias of [`Quantity::value`] for memory-like quantities.
    pub fn bytes(&self) -> i128 {
        self.value()
    }

    /// Whether the quantity is negative.
    pub fn is_negative(&self) -> bool {
        self.nanos < 0
    }
}

fn ceil_div(a: i128, b: i128) -> i128 {
    let q = a / b;
    if a % b > 0 { q + 1 } else { q }
}

impl fmt::Display for Quantity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.nanos % NANO == 0 {
            write!(f, "{}", self.nanos / NANO)
        } else if self.nanos % 1_000_000 == 0 {
            write!(f, "{}m", self.nanos / 1_000_000)
        } else {
            write!(f, "{}n", self.nanos)
        }
    }
}

impl std::str::FromStr for Quantity {
    type Err = QuantityError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse_quantity(s)
    }
}

/// Parses a Kubernetes quantity: optional sign, decimal number, then one suffix: binary
/// (`Ki Mi Gi Ti Pi Ei`), decimal SI (`n u m k M G T P E`) or a decimal exponent (`e3`, `E-2`).
pub fn parse_quantity(s: &str) -> Result<Quantity, QuantityError> {
    let s = s.trim();
    if s.is_empty() {
        return Err(QuantityError);
    }
    let (negative, rest) = match s.as_bytes()[0] {
        b'+' => (false, &s[1..]),
        b'-' => (true, &s[1..]),
        _ => (false, s),
    };
    let num_end = rest
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(rest.len());
    let (number, suffix) = rest.split_at(num_end);
    if number.is_empty() || number == "." || number.matches('.').count() > 1 {
        return Err(QuantityError);
    }
    let (int_part, frac_part) = number.split_once('.').unwrap_or((number, ""));
    // Mantissa as integer digits plus a decimal exponent.
    let digits = format!("{int_part}{frac_part}");
    let digits = digits.trim_start_matches('0');
    if digits.len() > 30 {
        return Err(QuantityError);
    }
    let mantissa: i128 = if digits.is_empty() {
        0
    } else {
        digits.parse().map_err(|_| QuantityError)?
    };
    let mut exp10: i32 = -(frac_part.len() as i32);
    let mut mult: i128 = 1;
    match suffix {
        "" => {}
        "Ki" => mult = 1 << 10,
        "Mi" => mult = 1 << 20,
        "Gi" => mult = 1 << 30,
        "Ti" => mult = 1 << 40,
        "Pi" => mult = 1 << 50,
        "Ei" => mult = 1 << 60,
        "n" => exp10 -= 9,
        "u" => exp10 -= 6,
        "m" => exp10 -= 3,
        "k" => exp10 += 3,
        "M" => exp10 += 6,
        "G" => exp10 += 9,
        "T" => exp10 += 12,
        "P" => exp10 += 15,
        "E" => exp10 += 18,
        other => {
            let exp = other
                .strip_prefix('e')
                .or_else(|| other.strip_prefix('E'))
                .ok_or(QuantityError)?;
            let exp_digits = exp.strip_prefix(['+', '-']).unwrap_or(exp);
            if exp_digits.is_empty() || !exp_digits.bytes().all(|b| b.is_ascii_digit()) {
                return Err(QuantityError);
            }
            let e: i32 = exp.parse().map_err(|_| QuantityError)?;
            exp10 = exp10.checked_add(e).ok_or(QuantityError)?;
        }
    }
    // nanos = mantissa * mult * 10^(exp10 + 9)
    let shift = exp10 + 9;
    let base = mantissa.checked_mul(mult).ok_or(QuantityError)?;
    let nanos = if shift >= 0 {
        if shift > 30 {
            return Err(QuantityError);
        }
        base.checked_mul(10i128.pow(shift as u32))
            .ok_or(QuantityError)?
    } else {
        let div = 10i128.checked_pow((-shift) as u32);
        match div {
            // Kubernetes rounds sub-nano precision up.
            Some(d) => ceil_div(base, d),
            None => i128::from(base > 0),
        }
    };
    Ok(Quantity {
        nanos: if negative { -nanos } else { nanos },
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn parses() {
        let q = |s: &str| parse_quantity(s).unwrap();
        assert_eq!(q("100m").millis(), 100);
        assert_eq!(q("0.5").millis(), 500);
        assert_eq!(q("1").millis(), 1000);
        assert_eq!(q("64Mi").bytes(), 64 * 1024 * 1024);
        assert_eq!(q("1G").bytes(), 1_000_000_000);
        assert_eq!(q("1e3").value(), 1000);
        assert_eq!(q("1.5Gi").bytes(), 1536 * 1024 * 1024);
        assert_eq!(q("2k").value(), 2000);
        assert_eq!(q("-1").value(), -1);
        assert_eq!(q("250u").millis(), 1);
        assert_eq!(q(".5").millis(), 500);
        assert!(q("1Mi") > q("1M"));
        for bad in ["", "abc", "1Qi", "1.2.3", "Mi", "1e", "1 Mi", "."] {
            assert!(parse_quantity(bad).is_err(), "{bad}");
        }
    }
}
