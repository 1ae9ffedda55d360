//! Cron schedules as CronJobs write them (robfig/cron's standard parser, as Kubernetes): five
//! fields (minute, hour, day of month, month, day of week) with `*`, lists, ranges, steps and
//! month/day names, or a macro (`@yearly`, `@annually`, `@monthly`, `@weekly`, `@daily`,
//! `@midnight`, `@hourly`). When both day fields are restricted a day matches either (cron's
//! rule). Times are computed in a time zone, minute by minute at most a few years ahead. A
//! `TZ=` or `CRON_TZ=` prefix names the zone inside the schedule (upstream's older form;
//! `spec.timeZone` is the current one and may not be combined with it). Time zone names are
//! looked up in the system's tz database through jiff (read once, then cached): the one read
//! this crate does.

use jiff::civil::{Date, DateTime};
use jiff::tz::TimeZone;
use jiff::{Timestamp, ToSpan, Zoned};

/// A parsed schedule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Schedule {
    minutes: u64,
    hours: u32,
    days: u32,
    months: u16,
    weekdays: u8,
    /// Both day fields are restricted: either may match.
    either_day: bool,
}

const MONTHS: [&str; 12] = [
    "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
];
const WEEKDAYS: [&str; 7] = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"];

fn field(text: &str, min: u32, max: u32, names: &[&str]) -> Result<(u64, bool), String> {
    let value = |s: &str| -> Result<u32, String> {
        let lower = s.to_ascii_lowercase();
        if let Some(i) = names.iter().position(|n| *n == lower) {
            return Ok(min + u32::try_from(i).unwrap_or(0));
        }
        s.parse::<u32>()
            .map_err(|_| format!("failed to parse int from {s}"))
    };
    let mut bits = 0u64;
    let mut star = false;
    for part in text.split(',') {
        let (range, step) = match part.split_once('/') {
            Some((r, s)) => {
                let step: u32 = s
                    .parse()
                    .map_err(|_| format!("failed to parse int from {s}"))?;
                if step == 0 {
                    return Err(format!("step of range should be a positive number: {part}"));
                }
                (r, Some(step))
            }
            None => (part, None),
        };
        let (lo, hi) = if range == "*" || range == "?" {
            star = step.is_none();
            (min, max)
        } else if let Some((a, b)) = range.split_once('-') {
            (value(a)?, value(b)?)
        } else {
            let v = value(range)?;
            (v, if step.is_some() { max } else { v })
        };
        if lo < min || hi > max || lo > hi {
            return Err(format!("{part}: out of range [{min}, {max}]"));
        }
        let step = step.unwrap_or(1);
        let mut v = lo;
        while v <= hi {
            bits |= 1 << v;
            match v.checked_add(step) {
                Some(next) => v = next,
                None => break,
            }
        }
    }
    Ok((bits, star))
}

/// Splits a `TZ=zone` / `CRON_TZ=zone` prefix off a schedule.
pub fn split_zone(text: &str) -> (Option<&str>, &str) {
    let text = text.trim();
    for prefix in ["CRON_TZ=", "TZ="] {
        if let Some(rest) = text.strip_prefix(prefix) {
            let (zone, schedule) = rest.split_once(char::is_whitespace).unwrap_or((rest, ""));
            return (Some(zone), schedule.trim());
        }
    }
    (None, text)
}

/// The time zone named `name` (IANA names, `UTC`).
pub fn zone(name: &str) -> Result<TimeZone, String> {
    TimeZone::get(name).map_err(|_| format!("unknown time zone {name}"))
}

impl Schedule {
    /// Parses a schedule (without a zone prefix: see [`split_zone`]); the error says what is
    /// wrong, as upstream's parser does.
    pub fn parse(text: &str) -> Result<Schedule, String> {
        let text = text.trim();
        let expanded = match text {
            "@yearly" | "@annually" => "0 0 1 1 *",
            "@monthly" => "0 0 1 * *",
            "@weekly" => "0 0 * * 0",
            "@daily" | "@midnight" => "0 0 * * *",
            "@hourly" => "0 * * * *",
            other if other.starts_with('@') => {
                return Err(format!("unrecognized descriptor: {other}"));
            }
            other => other,
        };
        let fields: Vec<&str> = expanded.split_whitespace().collect();
        if fields.len() != 5 {
            return Err(format!(
                "expected exactly 5 fields, found {}: {text}",
                fields.len()
            ));
        }
        let (minutes, _) = field(fields[0], 0, 59, &[])?;
        let (hours, _) = field(fields[1], 0, 23, &[])?;
        let (days, days_star) = field(fields[2], 1, 31, &[])?;
        let (months, _) = field(fields[3], 1, 12, &MONTHS)?;
        // 0-6 from Sunday, as robfig/cron (which refuses 7).
        let (weekdays, weekdays_star) = field(fields[4], 0, 6, &WEEKDAYS)?;
        Ok(Schedule {
            minutes,
            hours: u32::try_from(hours).unwrap_or(0),
            days: u32::try_from(days).unwrap_or(0),
            months: u16::try_from(months).unwrap_or(0),
            weekdays: u8::try_from(weekdays).unwrap_or(0),
            either_day: !days_star && !weekdays_star,
        })
    }

    fn day_matches(&self, date: Date) -> bool {
        let dom = self.days & (1 << date.day()) != 0;
        let dow = self.weekdays & (1 << date.weekday().to_sunday_zero_offset()) != 0;
        if self.either_day {
            dom || dow
        } else {
            dom && dow
        }
    }

    /// The first scheduled time strictly after `after`, in `tz`; `None` when there is none
    /// within five years (a schedule like `0 0 30 2 *`).
    pub fn next_after(&self, after: Timestamp, tz: &TimeZone) -> Option<Timestamp> {
        let start = after.to_zoned(tz.clone());
        // The next whole minute after `after`.
        let mut t: DateTime = start
            .datetime()
            .with()
            .second(0)
            .subsec_nanosecond(0)
            .build()
            .ok()?
            .checked_add(1.minute())
            .ok()?;
        let limit = start.datetime().checked_add(5.years()).ok()?;
        while t <= limit {
            let date = t.date();
            if self.months & (1 << date.month()) == 0 {
                t = date
                    .first_of_month()
                    .checked_add(1.month())
                    .ok()?
                    .to_datetime(jiff::civil::Time::midnight());
                continue;
            }
            if !self.day_matches(date) {
                t = date
                    .tomorrow()
                    .ok()?
                    .to_datetime(jiff::civil::Time::midnight());
                continue;
            }
            if self.hours & (1 << t.hour()) == 0 {
                t = t
                    .with()
                    .minute(0)
                    .build()
                    .ok()?
                    .checked_add(1.hour())
                    .ok()?;
                continue;
            }
            if self.minutes & (1 << t.minute()) == 0 {
                t = t.checked_add(1.minute()).ok()?;
                continue;
            }
            // A local time skipped by a DST change runs at the next valid instant; one
            // repeated runs once (the earlier).
            let zoned: Zoned = t.to_zoned(tz.clone()).ok()?;
            let at = zoned.timestamp();
            if at > after {
                return Some(at);
            }
            t = t.checked_add(1.minute()).ok()?;
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: &str) -> Timestamp {
        s.parse().expect("time")
    }

    #[test]
    fn parses_what_kubernetes_accepts_and_refuses_the_rest() {
        for ok in [
            "* * * * *",
            "*/5 0-6 1,15 JAN-jun mon-FRI",
            "@hourly",
            "0 0 * * 0",
            "30 2 * * ?",
            "1/4294967295 * * * *",
        ] {
            assert!(Schedule::parse(ok).is_ok(), "{ok}");
        }
        for (bad, why) in [
            ("* * * *", "expected exactly 5 fields"),
            ("61 * * * *", "out of range"),
            ("0 0 * * 7", "out of range"),
            ("*/0 * * * *", "positive"),
            ("@fortnightly", "unrecognized descriptor"),
            ("a * * * *", "failed to parse int"),
        ] {
            let error = Schedule::parse(bad).expect_err(bad);
            assert!(error.contains(why), "{bad}: {error}");
        }
    }

    #[test]
    fn next_times_follow_fields_and_time_zones() {
        let utc = TimeZone::UTC;
        let every5 = Schedule::parse("*/5 * * * *").expect("schedule");
        assert_eq!(
            every5.next_after(ts("2026-01-01T00:03:20Z"), &utc),
            Some(ts("2026-01-01T00:05:00Z"))
        );
        assert_eq!(
            every5.next_after(ts("2026-01-01T00:05:00Z"), &utc),
            Some(ts("2026-01-01T00:10:00Z"))
        );
        let monthly = Schedule::parse("@monthly").expect("schedule");
        assert_eq!(
            monthly.next_after(ts("2026-01-15T00:00:00Z"), &utc),
            Some(ts("2026-02-01T00:00:00Z"))
        );
        // Day of month OR day of week when both are restricted: the 13th or any Friday.
        let either = Schedule::parse("0 0 13 * 5").expect("schedule");
        assert_eq!(
            either.next_after(ts("2026-02-01T00:00:00Z"), &utc),
            Some(ts("2026-02-06T00:00:00Z"))
        );
        // 09:00 in New York is 14:00 UTC in winter.
        let ny = TimeZone::get("America/New_York").expect("tz");
        let nine = Schedule::parse("0 9 * * *").expect("schedule");
        assert_eq!(
            nine.next_after(ts("2026-01-10T00:00:00Z"), &ny),
            Some(ts("2026-01-10T14:00:00Z"))
        );
        let never = Schedule::parse("0 0 30 2 *").expect("schedule");
        assert_eq!(never.next_after(ts("2026-01-01T00:00:00Z"), &utc), None);
        assert_eq!(
            split_zone("TZ=Europe/Paris 0 9 * * *"),
            (Some("Europe/Paris"), "0 9 * * *")
        );
        assert_eq!(split_zone("0 9 * * *"), (None, "0 9 * * *"));
        assert!(zone("Mars/Olympus").is_err());
    }
}
