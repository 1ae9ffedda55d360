//! Kubernetes resource quantities (`100m`, `1.5Gi`, `2e3`) as integers.
//!
//! Owns only the conversion the scheduler needs: CPU in millicores and memory in bytes,
//! both rounded up as Kubernetes does. It does not validate canonical form or keep the
//! original formatting.

/// Parses a quantity into thousandths of its unit, rounding up; `None` when malformed or
/// when the value does not fit.
pub fn parse_milli(text: &str) -> Option<i128> {
    let text = text.trim();
    let (negative, rest) = match text.as_bytes().first()? {
        b'-' => (true, &text[1..]),
        b'+' => (false, &text[1..]),
        _ => (false, text),
    };
    let number_len = rest
        .bytes()
        .take_while(|b| b.is_ascii_digit() || *b == b'.')
        .count();
    let (number, suffix) = rest.split_at(number_len);
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    if whole.is_empty() && fraction.is_empty() {
        return None;
    }
    if whole.len() + fraction.len() > 30 {
        return None;
    }
    let mut mantissa: i128 = 0;
    for b in whole.bytes().chain(fraction.bytes()) {
        mantissa = mantissa * 10 + i128::from(b - b'0');
    }
    let (binary_factor, decimal_exponent): (i128, i32) = match suffix {
        "" => (1, 0),
        "m" => (1, -3),
        "k" => (1, 3),
        "M" => (1, 6),
        "G" => (1, 9),
        "T" => (1, 12),
        "P" => (1, 15),
        "E" => (1, 18),
        "Ki" => (1 << 10, 0),
        "Mi" => (1 << 20, 0),
        "Gi" => (1 << 30, 0),
        "Ti" => (1 << 40, 0),
        "Pi" => (1 << 50, 0),
        "Ei" => (1 << 60, 0),
        s if s.starts_with(['e', 'E']) => (1, s[1..].parse::<i32>().ok()?),
        _ => return None,
    };
    let numerator = mantissa.checked_mul(binary_factor)?;
    let exponent = 3 + decimal_exponent - i32::try_from(fraction.len()).ok()?;
    let value = if exponent >= 0 {
        numerator.checked_mul(10i128.checked_pow(u32::try_from(exponent).ok()?)?)?
    } else {
        let divisor = 10i128.checked_pow(u32::try_from(-exponent).ok()?)?;
        // Round away from zero, as Kubernetes does when it scales a quantity down.
        (numerator + divisor - 1) / divisor
    };
    Some(if negative { -value } else { value })
}

/// CPU in millicores (rounded up); `None` when malformed.
pub fn cpu_millis(text: &str) -> Option<i64> {
    i64::try_from(parse_milli(text)?).ok()
}

/// Memory (or any count) in whole units, rounded up; `None` when malformed.
pub fn whole_units(text: &str) -> Option<i64> {
    let milli = parse_milli(text)?;
    i64::try_from((milli + 999).div_euclid(1000)).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_quantities() {
        let cases = [
            ("100m", Some(100)),
            ("1", Some(1000)),
            ("0.5", Some(500)),
            ("1.5", Some(1500)),
            ("2k", Some(2_000_000)),
            ("1Ki", Some(1_024_000)),
            ("1e3", Some(1_000_000)),
            ("1E3", Some(1_000_000)),
            ("0.1m", Some(1)),
            ("-1", Some(-1000)),
            ("abc", None),
            ("", None),
            ("1Zi", None),
        ];
        for (text, want) in cases {
            assert_eq!(parse_milli(text), want, "{text}");
        }
    }

    #[test]
    fn converts_to_units() {
        assert_eq!(cpu_millis("250m"), Some(250));
        assert_eq!(cpu_millis("2"), Some(2000));
        assert_eq!(whole_units("128Mi"), Some(128 * 1024 * 1024));
        assert_eq!(whole_units("1G"), Some(1_000_000_000));
        assert_eq!(whole_units("1.5Gi"), Some(1_610_612_736));
        assert_eq!(whole_units("110"), Some(110));
        assert_eq!(whole_units("100m"), Some(1));
    }
}
