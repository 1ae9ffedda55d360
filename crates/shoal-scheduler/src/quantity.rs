//! Resource quantities as the scheduler counts them: CPU in millicores and memory (or any
//! count) in whole units, as `i64`.
//!
//! Parsing is `shoal_api::quantity::parse_quantity`'s (rounding up as Kubernetes does); this
//! module only narrows the result to `i64` and turns a malformed or out-of-range quantity
//! into `None`, which the callers treat as absent.

use shoal_api::quantity::parse_quantity;

/// CPU in millicores (rounded up); `None` when malformed or out of `i64` range.
pub fn cpu_millis(text: &str) -> Option<i64> {
    i64::try_from(parse_quantity(text).ok()?.millis()).ok()
}

/// Memory (or any count) in whole units, rounded up; `None` when malformed or out of `i64`
/// range.
pub fn whole_units(text: &str) -> Option<i64> {
    i64::try_from(parse_quantity(text).ok()?.value()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn malformed_or_out_of_range_is_none() {
        assert_eq!(cpu_millis("abc"), None);
        assert_eq!(whole_units(""), None);
        // Parses, but does not fit an i64 once scaled.
        assert_eq!(cpu_millis("10E"), None);
        assert_eq!(whole_units("100000E"), None);
    }
}
